"""The one HTTP transport for every outbound call to an OpenAI-compatible server: the co-generation client
(`client.py`), the judge (`cogenesis.eval.judge`) and the synthesis pipeline (`cogenesis.data.synthesis`).

One `requests.Session` per thread, Bearer auth, (connect, read) timeouts per read plus a deadline for the whole
call (requests has per-read timeouts only, so the body is read in chunks and cut off at the deadline), retries
of 429, 5xx and timeouts by tenacity (exponential backoff, Retry-After honoured up to `MAX_RETRY_AFTER_S`),
nothing else retried. Every failure is a `CloudError` subclass that names the URL and the fix. The bytes sent
are exactly the bytes the caller passes (the guard's audit hashes them), and `on_attempt(n_bytes)` is called
before each attempt, so callers count what left the device retries included.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable

import requests
import tenacity

from cogenesis.core.paths import API_KEY_ENV

MAX_RETRY_AFTER_S = 10.0
MAX_ANSWER_BYTES = 64 << 20  # a larger answer is not a completion: refuse it instead of filling memory
RETRY_STATUSES = (429, 500, 502, 503, 504)


class CloudError(Exception):
    """The cloud request failed; `url`, `status` (HTTP code or None) and `fix` say where and what to do."""

    retryable = False

    def __init__(self, message: str, url: str = "", status: int | None = None, fix: str = ""):
        self.message, self.url, self.status, self.fix = message, url, status, fix
        text = f"{message} [{url}]" if url else message
        super().__init__(f"{text}; fix: {fix}" if fix else text)


class CloudAuthError(CloudError):
    """401/403: missing or wrong API key."""


class CloudNotFoundError(CloudError):
    """404: wrong base URL, endpoint not served, or unknown model name."""


class CloudBadRequestError(CloudError):
    """400/422 and other 4xx: the server rejected the request (a limit, a field it does not support)."""


class CloudPayloadTooLargeError(CloudError):
    """413: the request body is over the server's size limit."""


class CloudRateLimitError(CloudError):
    """429: too many requests (retried)."""

    retryable = True
    retry_after: float | None = None


class CloudServerError(CloudError):
    """5xx: the server failed (retried)."""

    retryable = True


class CloudTimeoutError(CloudError):
    """No answer within the read timeout, or no connection within the connect timeout (retried)."""

    retryable = True


class CloudConnectionError(CloudError):
    """Connection refused, DNS failure, reset: nothing is listening there."""


class CloudProtocolError(CloudError):
    """The answer is not the JSON the OpenAI/vLLM API specifies (garbage, missing fields, empty outline)."""


def normalize_base_url(base_url: str, what: str = "base_url") -> str:
    """``http://host:port`` without a trailing ``/`` or ``/v1`` (paths are given in full: ``/v1/...``)."""
    if not base_url or "://" not in base_url:
        raise ValueError(f"{what} must be like http://127.0.0.1:8000 (got {base_url!r})")
    url = base_url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


class Transport:
    """HTTP to one server. `timeout`: (connect, read) seconds per read; `deadline_s`: the whole call, retries and
    the slow arrival of an answer included (None: none); `retries`: extra attempts for retryable errors."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: tuple[float, float] | float = (3.05, 60.0),
                 retries: int = 2, backoff: float = 0.5, deadline_s: float | None = None,
                 http: requests.Session | None = None, on_attempt: Callable[[int], None] | None = None,
                 retry_connect: bool = False):
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key or None
        self.timeout, self.deadline_s = timeout, deadline_s
        self.retries, self.backoff = max(0, int(retries)), backoff
        self.on_attempt = on_attempt
        self.retry_connect = retry_connect  # also retry a refused connection (a batch job outliving a restart)
        self._shared = http  # a caller's session (e.g. one that records bodies), used by every thread
        self._local = threading.local()

    @property
    def http(self) -> requests.Session:
        """The session of this thread (the caller's, when one was given)."""
        if self._shared is not None:
            return self._shared
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def headers(self, has_body: bool, extra: dict | None = None) -> dict:
        h = {"Accept": "application/json"}
        if has_body:
            h["Content-Type"] = "application/json"
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h | (extra or {})

    def send(self, method: str, path: str, raw: bytes | None = None, headers: dict | None = None,
             retries: int | None = None, on_attempt: Callable[[int], None] | None = None) -> requests.Response:
        """Send exactly `raw`; retry 429/5xx/timeouts; return the response (status < 400, body read).
        `on_attempt(n_bytes)` (default: the transport's) is called before every attempt."""
        url = self.base_url + path
        until = time.monotonic() + self.deadline_s if self.deadline_s else math.inf
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt((self.retries if retries is None else retries) + 1) | _StopAt(until),
            wait=_wait(self.backoff, until),
            retry=tenacity.retry_if_exception(self._retryable),
            reraise=True,
        )
        count = on_attempt or self.on_attempt
        return retrying(self._once, method, url, raw, self.headers(raw is not None, headers), until, count)

    def _retryable(self, e: BaseException) -> bool:
        return isinstance(e, CloudError) and (e.retryable or (self.retry_connect and isinstance(e, CloudConnectionError)))

    def send_json(self, method: str, path: str, raw: bytes | None = None, headers: dict | None = None) -> dict:
        """`send`, then the answer as a JSON object (else `CloudProtocolError`)."""
        r = self.send(method, path, raw, headers)
        return parse_object(r, self.base_url + path)

    def post(self, path: str, body: dict, headers: dict | None = None,
             on_attempt: Callable[[int], None] | None = None) -> dict:
        """POST a JSON body (compact UTF-8) and return the JSON object answered."""
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        r = self.send("POST", path, raw, headers, on_attempt=on_attempt)
        return parse_object(r, self.base_url + path)

    def _once(self, method: str, url: str, raw: bytes | None, headers: dict, until: float,
              count: Callable[[int], None] | None) -> requests.Response:
        if count is not None:
            count(len(raw or b""))
        try:
            r = self.http.request(method, url, data=raw, headers=headers, timeout=self.timeout, stream=True)
            _read_until(r, until, url)
        except requests.Timeout as e:
            raise CloudTimeoutError(f"no answer within {self.timeout} s (connect, read)", url, None,
                                    "check that the server is up and not overloaded, or raise timeout=") from e
        except requests.ConnectionError as e:
            raise CloudConnectionError(f"cannot connect ({_root(e)})", url, None,
                                       "start the cloud server (cogenesis cloud serve) or fix the base URL") from e
        except requests.RequestException as e:
            raise CloudConnectionError(f"request failed ({type(e).__name__}: {e})", url, None,
                                       "check the base URL") from e
        if r.status_code >= 400:
            raise http_error(r, url)
        return r

    def close(self) -> None:
        self.http.close()


def parse_object(r: requests.Response, url: str) -> dict:
    """The answer's JSON object; anything else is a `CloudProtocolError` naming what came back."""
    try:
        data = json.loads(r.content)
    except (json.JSONDecodeError, ValueError) as e:
        raise CloudProtocolError(f"the answer is not JSON (HTTP {r.status_code}, {len(r.content)} bytes: "
                                 f"{r.content[:60]!r})", url, r.status_code,
                                 "point base_url at an OpenAI-compatible server (vLLM or cogenesis cloud serve)") from e
    if not isinstance(data, dict):
        raise CloudProtocolError(f"expected a JSON object, got {type(data).__name__}", url, r.status_code,
                                 "point base_url at an OpenAI-compatible server")
    return data


class _StopAt(tenacity.stop.stop_base):
    """Stop retrying once the call's deadline (a `time.monotonic()` value) has passed."""

    def __init__(self, until: float):
        self.until = until

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() >= self.until


def _wait(backoff: float, until: float) -> Callable[[tenacity.RetryCallState], float]:
    """Exponential backoff, or the server's Retry-After (capped), never past the deadline."""

    def wait(state: tenacity.RetryCallState) -> float:
        e = state.outcome.exception() if state.outcome else None
        after = getattr(e, "retry_after", None)
        delay = min(after, MAX_RETRY_AFTER_S) if after is not None else backoff * 2 ** (state.attempt_number - 1)
        return min(delay, max(until - time.monotonic(), 0.0))

    return wait


def _read_until(r: requests.Response, until: float, url: str) -> bytes:
    """The answer's body, read in chunks: a server that drips bytes just under the read timeout is cut off at
    the request's deadline (requests has per-read timeouts only); the body then also serves ``r.content``."""
    parts, size = [], 0
    try:
        while chunk := r.raw.read1(1 << 16):  # what arrived, at most one socket read: the deadline is checked
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise CloudProtocolError(f"the answer exceeds {MAX_ANSWER_BYTES >> 20} MiB", url, r.status_code,
                                         "check the server")
            if time.monotonic() > until:
                raise CloudTimeoutError("the answer was still arriving at the request deadline", url, r.status_code,
                                        "the server is too slow or stalling; raise deadline_s= or check it")
    finally:
        r.close()
    r._content = b"".join(parts)  # requests' own cache of the body (r.json(), r.text and http_error read it)
    return r._content


def _root(e: Exception) -> str:
    s = str(e)
    for hint in ("Connection refused", "Name or service not known", "No route to host", "Connection reset"):
        if hint in s:
            return hint
    return type(e).__name__


def http_error(r: requests.Response, url: str) -> CloudError:
    """The `CloudError` for an HTTP error answer, with the server's message and the fix."""
    msg = ""
    try:
        j = r.json()
        err = j.get("error", j) if isinstance(j, dict) else j
        msg = err.get("message", "") if isinstance(err, dict) else str(err)
        msg = msg or (j.get("message", "") if isinstance(j, dict) else "")
    except ValueError:
        msg = r.text[:200]
    s = r.status_code
    what = f"HTTP {s}: {msg}".rstrip(": ")
    if s in (401, 403):
        return CloudAuthError(what, url, s, f"set the API key (api_key= or ${API_KEY_ENV}) to the server's --api-key")
    if s == 404:
        return CloudNotFoundError(what, url, s, "check the base URL (no /v1 needed) and the model name (GET /v1/models)")
    if s == 413:
        return CloudPayloadTooLargeError(what, url, s, "send a shorter prompt or raise the server's --max-body-bytes")
    if s == 429:
        e = CloudRateLimitError(what, url, s, "slow down or raise the server's limits")
        ra = r.headers.get("Retry-After")
        e.retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
        return e
    if s >= 500:
        return CloudServerError(what, url, s, "the server failed; retry later or check its logs")
    return CloudBadRequestError(what, url, s, "check the request fields against the server's limits (GET /v1/models)")
