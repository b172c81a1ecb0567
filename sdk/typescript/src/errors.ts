/**
 * One error class per error-code family of the API. The server answers errors as
 * `{"error": {"code", "message"}}` with an HTTP status; the SDK throws the class of the code,
 * carrying `code`, `message` and `status`.
 */

export class FaaSError extends Error {
  readonly code: string;
  readonly status: number;

  constructor(message: string, code = "internal", status = 0) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
  }
}

/** 400: the body is not JSON of the right shape, or the request is invalid. */
export class InvalidRequestError extends FaaSError {}
/** 404: no such instance, snapshot, function, invocation, image or route. */
export class NotFoundError extends FaaSError {}
/** 409: the target's state forbids it now. */
export class ConflictError extends FaaSError {}
/** 413: the body or payload is over the limit. */
export class PayloadTooLargeError extends FaaSError {}
/** 429: a limit was reached; try again later. */
export class RateLimitedError extends FaaSError {}
/** 501: the server or backend does not have this feature. */
export class UnsupportedError extends FaaSError {}
/** 503: the backend cannot serve now. */
export class BackendUnavailableError extends FaaSError {}
/** 504, or the HTTP call itself timed out (a command's own timeout is a result with `timedOut`). */
export class TimeoutError extends FaaSError {}
/** 500: the server failed; its log has the details. */
export class InternalError extends FaaSError {}
/** The server could not be reached. */
export class ConnectionError extends FaaSError {}

const BY_CODE: Record<string, typeof FaaSError> = {
  invalid_json: InvalidRequestError,
  invalid_request: InvalidRequestError,
  method_not_allowed: InvalidRequestError,
  not_found: NotFoundError,
  image_not_found: NotFoundError,
  conflict: ConflictError,
  payload_too_large: PayloadTooLargeError,
  rate_limited: RateLimitedError,
  unsupported: UnsupportedError,
  backend_unavailable: BackendUnavailableError,
  timeout: TimeoutError,
  internal: InternalError,
};

const BY_STATUS: Record<number, typeof FaaSError> = {
  400: InvalidRequestError,
  404: NotFoundError,
  409: ConflictError,
  413: PayloadTooLargeError,
  429: RateLimitedError,
  501: UnsupportedError,
  503: BackendUnavailableError,
  504: TimeoutError,
};

/** The error for an error answer (its parsed JSON body, or its text). */
export function errorFromResponse(status: number, body: unknown): FaaSError {
  let code: string | undefined;
  let message: string | undefined;
  if (body && typeof body === "object" && "error" in body) {
    const e = (body as { error: { code?: string; message?: string } }).error;
    code = e?.code;
    message = e?.message;
  }
  const Cls =
    (code && BY_CODE[code]) || BY_STATUS[status] || (status >= 500 ? InternalError : FaaSError);
  return new Cls(message ?? (typeof body === "string" ? body : `HTTP ${status}`), code ?? "unknown", status);
}
