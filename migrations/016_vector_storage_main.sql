-- Embeddings kept in their row (STORAGE MAIN) instead of the TOAST table.
--
-- Why: pgvector declares its type STORAGE external, so every 768-dim embedding (3 kB, over the 2 kB TOAST
-- threshold) is moved out of line, and each row a similarity query reads costs a TOAST index lookup and a
-- chunk fetch: the exact ranking of a small scope reads all of its rows, the HNSW branch's similarity
-- threshold reads each candidate's embedding. MAIN keeps the value in the row (pglz-compressed when that
-- shrinks it, raw otherwise) and moves it out only if the row would not fit a page. Measured in PGlite on the
-- bench corpus (README "Vectors at scale"): the exact top 10 of a 1,000-row scope of a 100k-row table went
-- from 12.6 / 13.9 ms (p50 / p95, repeated) to 7.9 / 8.8 ms, with the same results for 100 of 100 queries.
--
-- Catalog only: rows written from now on are stored inline; existing rows move when rewritten (VACUUM FULL
-- <table>, which locks it, or a re-ingest). HNSW indexes hold their own copy of each vector and are unaffected.
ALTER TABLE industry_packs ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE playbooks ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE chat_facts ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE semantic_cache ALTER COLUMN embedding SET STORAGE MAIN;
