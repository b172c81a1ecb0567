/**
 * One error class per error-code family of the API. The server answers errors as
 * `{"error": {"code", "message"}}` with an HTTP status; the SDK throws the class of the code,
 * carrying `code`, `message`, `status` and, when the answer had a `Retry-After` header (429s),
 * `retryAfter` in seconds.
 */

export class FaaSError extends Error {
  readonly code: string;
  readonly status: number;
  /** Seconds to wait before trying again (the answer's `Retry-After`), or null. */
  readonly retryAfter: number | null;

  constructor(message: string, code = "internal", status = 0, retryAfter: number | null = null) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
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
/** 401 `unauthenticated`: no API key, or one that is unknown, expired or revoked. */
export class AuthenticationError extends FaaSError {}
/** 403 `forbidden`: the key may not do this (a member key asking for an admin operation). */
export class ForbiddenError extends FaaSError {}
/** 429: a limit was reached (the tenant's request rate, a function's concurrency); try again
 * after `retryAfter` seconds. */
export class RateLimitedError extends FaaSError {}
/** 429 `quota_exceeded`: one of the tenant's quotas is used up (the message names it). */
export class QuotaExceededError extends RateLimitedError {}
/** 501: the server or backend does not have this feature. */
export class UnsupportedError extends FaaSError {}
/** 502: the server on an instance's port (reached through the port proxy) gave no HTTP answer
 * that can be passed on (`bad_gateway`). */
export class BadGatewayError extends FaaSError {}
/** 502 `port_closed`: nothing listens on the instance's port the request was for (not yet, or
 * no more). */
export class PortClosedError extends BadGatewayError {}
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
  unauthenticated: AuthenticationError,
  forbidden: ForbiddenError,
  rate_limited: RateLimitedError,
  quota_exceeded: QuotaExceededError,
  unsupported: UnsupportedError,
  backend_unavailable: BackendUnavailableError,
  port_closed: PortClosedError,
  bad_gateway: BadGatewayError,
  timeout: TimeoutError,
  internal: InternalError,
};

const BY_STATUS: Record<number, typeof FaaSError> = {
  400: InvalidRequestError,
  401: AuthenticationError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  413: PayloadTooLargeError,
  429: RateLimitedError,
  501: UnsupportedError,
  502: BadGatewayError,
  503: BackendUnavailableError,
  504: TimeoutError,
};

/** The seconds of a `Retry-After` header: a number of seconds or an HTTP date. */
export function retryAfterSeconds(value: string | null | undefined): number | null {
  if (!value) return null;
  const seconds = Number(value);
  if (value.trim() !== "" && Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

/**
 * Whether `body` (an answer's parsed JSON) is an error of the API itself: exactly
 * `{"error": {"code", "message"}}` with a code of the table. What a port's server answers
 * (through the port proxy) is passed on as it is; this tells the proxy's own refusals from it.
 */
export function isApiError(body: unknown): boolean {
  if (!body || typeof body !== "object" || Array.isArray(body)) return false;
  const keys = Object.keys(body);
  if (keys.length !== 1 || keys[0] !== "error") return false;
  const e = (body as { error: unknown }).error;
  if (!e || typeof e !== "object") return false;
  const { code, message, ...rest } = e as { code?: unknown; message?: unknown };
  return typeof code === "string" && Object.prototype.hasOwnProperty.call(BY_CODE, code) && typeof message === "string" && Object.keys(rest).length === 0;
}

/**
 * The error for an error answer (its parsed JSON body, or its text); `sentKey`: whether the
 * request carried an API key (a 401 without one says how to give one).
 */
export function errorFromResponse(
  status: number,
  body: unknown,
  retryAfter: number | null = null,
  sentKey = true,
): FaaSError {
  let code: string | undefined;
  let message: string | undefined;
  if (body && typeof body === "object" && "error" in body) {
    const e = (body as { error: { code?: string; message?: string } }).error;
    code = e?.code;
    message = e?.message;
  }
  const Cls =
    (code && BY_CODE[code]) || BY_STATUS[status] || (status >= 500 ? InternalError : FaaSError);
  let text = message ?? (typeof body === "string" ? body : `HTTP ${status}`);
  if (Cls === AuthenticationError && !sentKey) {
    text += " (the client has no API key: pass the apiKey option or set FAAS_API_KEY)";
  }
  return new Cls(text, code ?? "unknown", status, retryAfter);
}
