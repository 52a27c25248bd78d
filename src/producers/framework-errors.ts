import { STATUS_CODES } from 'node:http';

/**
 * Fastify's own 4xx errors in the API's words. Several of fastify's messages quote the URL or a header
 * (`'%s' is not a valid url component`), so none is passed through: a caller-controlled string never comes
 * back in an error.
 */
export function frameworkMessage(err: { code?: string; statusCode?: number }, bodyLimit: number): string {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return `request body larger than ${bodyLimit} bytes`;
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return 'unsupported content-type: send application/json';
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return 'request body size did not match Content-Length';
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return 'request body is empty but content-type is application/json';
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return 'request body is not valid JSON';
    case 'FST_ERR_BAD_URL':
      return 'the URL is not valid (bad percent-encoding)';
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return 'a path parameter is too long';
    case 'FST_ERR_ROUTE_MISSING_CONTENT_TYPE':
      return 'a content-type header is required with a body';
    default:
      return (STATUS_CODES[err.statusCode ?? 400] ?? 'bad request').toLowerCase();
  }
}
