"""The simulator's error catalogue: DashScope error codes with their HTTP status and text.

Codes and texts follow the service's published error list (reference section B). A few texts
the reference leaves open (bill-overdue variants, the gateway timeout) are written here in
the same style and marked as such.
"""

from __future__ import annotations


class SimError(Exception):
    """An error answer the simulator sends: HTTP status, body `code` and body `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message


GENERIC_INVALID = "Required parameter(s) missing or invalid, please check the request parameters."

# code -> (HTTP status, message)
CODES: dict[str, tuple[int, str]] = {
    "InvalidParameter": (400, GENERIC_INVALID),
    "DataInspectionFailed": (400, "Input or output data may contain inappropriate content."),
    "Arrearage": (400, "Access denied, please make sure your account is in good standing."),
    "InternalError.Algo.InvalidParameter": (400, "Range of input length should be [1, 129024]"),
    "BadRequest.EmptyInput": (400, "Required input parameter missing from request."),
    "BadRequest.EmptyParameters": (400, 'Required parameter "parameters" missing from request.'),
    "BadRequest.EmptyModel": (400, 'Required parameter "model" missing from request.'),
    "InvalidApiKey": (401, "Invalid API-key provided."),
    "AccessDenied": (403, "Access denied."),
    "AccessDenied.Unpurchased": (
        403,
        "Access to model denied. Please make sure you are eligible for using the model.",
    ),
    "Model.AccessDenied": (403, "Model access denied."),
    "Workspace.AccessDenied": (403, "Workspace access denied."),
    "AllocationQuota.FreeTierOnly": (
        403,
        "The free tier of the model has been exhausted. If you wish to continue access the "
        'model on a paid basis, please disable the "use free tier only" mode in the '
        "management console.",
    ),
    "ModelNotFound": (404, "Model can not be found."),
    "RequestTimeOut": (408, "Request timed out, please try again later."),
    "BadRequest.TooLarge": (413, "Payload Too Large."),
    "Throttling": (429, "Requests throttling triggered."),
    "Throttling.RateQuota": (429, "Requests rate limit exceeded, please try again later."),
    "Throttling.BurstRate": (
        429,
        "Request rate increased too quickly. To ensure system stability, please adjust your "
        "client logic to scale requests more smoothly over time.",
    ),
    "Throttling.AllocationQuota": (
        429,
        "Allocated quota exceeded, please increase your quota limit.",
    ),
    "Throttling.Concurrency": (429, "Too many concurrent requests."),
    # The next three texts are not given verbatim by the reference (it says "etc.").
    "PrepaidBillOverdue": (429, "The prepaid bill is overdue."),
    "PostpaidBillOverdue": (429, "The postpaid bill is overdue."),
    "CommodityNotPurchased": (429, "The commodity has not been purchased."),
    "InternalError": (
        500,
        "An internal error has occured, please try again later or contact service support.",
    ),
    "InternalError.Algo": (500, "Inference internal error."),
    "SystemError": (500, "A system error has occurred, please try again later."),
    "ModelServiceFailed": (500, "Failed to request model service."),
    "ServiceUnavailable": (
        503,
        "Too many requests. Your requests are being throttled due to system capacity limits. Please try again later.",
    ),
    "ModelUnavailable": (503, "Model is unavailable, please try again later."),
    # No body is documented for 504; this text is the simulator's own.
    "GatewayTimeout": (504, "Gateway timeout, please try again later."),
}

# HTTP status -> the code a bare status number in a fault stands for.
STATUS_CODES: dict[int, str] = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    404: "ModelNotFound",
    408: "RequestTimeOut",
    413: "BadRequest.TooLarge",
    429: "Throttling.RateQuota",
    500: "InternalError",
    503: "ModelUnavailable",
    504: "GatewayTimeout",
}


def error_for_code(code: str, message: str | None = None) -> SimError:
    """The error answer for a catalogue code; `message` overrides the catalogue text."""
    status, text = CODES[code]
    return SimError(status, code, text if message is None else message)


def error_for_status(status: int) -> SimError:
    """The error answer a bare HTTP status stands for (unlisted 4xx/5xx get a generic code)."""
    code = STATUS_CODES.get(status)
    if code is not None:
        return error_for_code(code)
    if 400 <= status < 500:
        return SimError(status, "InvalidParameter", GENERIC_INVALID)
    if 500 <= status < 600:
        return SimError(status, "InternalError", CODES["InternalError"][1])
    msg = f"fault status {status} is not an HTTP error status (400-599)"
    raise ValueError(msg)
