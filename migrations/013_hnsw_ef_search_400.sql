-- hnsw.ef_search 100 -> 400 on the two similarity functions, chosen by measurement at 100k rows
-- (BENCH_ONLY=vectors-large, one chat_facts table holding 100k rows in one org + 100k over 100 orgs,
-- 768 dims, HNSW m 16 / ef_construction 64; README "Vectors at scale" has the table).
--
-- For the 100k-row org (half the table passes its filter) recall@10 against an exact ranking of the same
-- filter was 0.888 at ef_search 100, 0.933 at 200, 0.965 at 400: the candidate list is the lever. The other
-- query-side levers changed nothing at this selectivity: strict_order vs relaxed_order gave the same recall
-- (the first ef_search candidates already hold far more than 10 rows of the org, so the scan never iterates),
-- and hnsw.max_scan_tuples 1000 / 20000 / 100000 likewise. So strict_order (rows come out in distance order
-- with no re-sort) and max_scan_tuples 20000 (the bound for selective scopes) stay as migration 012 set them.
-- 300 reached 0.957, too thin a margin over the 0.95 target for 100 queries. The price is latency: at 100k
-- the index query's SQL p50 was ~7 ms at ef_search 100 vs 23-30 ms at 400 (warm pages), at 10k 7.9 vs
-- 17.4 ms (recall 0.986 -> 1.0), at 50k 8.3 vs 23.5 ms (0.959 -> 0.992), each pair from one run.
-- Scopes of <= vector_exact_scan_max() rows are ranked exactly and do not read this setting.
ALTER FUNCTION match_documents(vector, text, text, float, int, jsonb) SET hnsw.ef_search = 400;
ALTER FUNCTION semantic_cache_nearest(vector, text, text, text, text, int) SET hnsw.ef_search = 400;
