"""Failure details as the Durable extension records them for an out-of-process (Python) app.

A failed activity's TaskFailed event carries `Reason` ("Activity function 'x' failed: Type:
message", one line) and `Details`, the failure serialized as the extension's error data
converter writes a .NET exception (JSON: ClassName, Message, StackTraceString, ...). The
Python SDK raises `Exception(f"{Reason} \\n {Details}")` in the orchestrator, so code there
reads the message and the stack the way it would on Azure. Events also carry DTF's
`FailureDetails` (ErrorType, ErrorMessage, StackTrace), the structured form newer clients read."""
from __future__ import annotations

import json
import traceback

OUT_OF_PROC = "$OutOfProcData$:"


def user_exception(error: BaseException) -> BaseException:
    """The exception the user's code raised: the SDK re-raises an orchestrator's exception
    wrapped (with its replay state appended to the message) `from` the original."""
    if OUT_OF_PROC in str(error) and error.__cause__ is not None:
        return error.__cause__
    return error


def stack_of(error: BaseException) -> str:
    return "".join(traceback.format_tb(error.__traceback__))


def full_traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)).rstrip()


def failure_details(error: BaseException) -> dict:
    return {"ErrorType": type(error).__name__, "ErrorMessage": str(error), "StackTrace": stack_of(error),
            "InnerFailure": None, "IsNonRetriable": False}


def serialized_exception(error: BaseException) -> str:
    """`Details`: the failure as the extension's error data converter serializes an exception."""
    return json.dumps({"$type": "System.Exception, System.Private.CoreLib", "ClassName": "System.Exception",
                       "Message": f"{type(error).__name__}: {error}", "Data": None, "InnerException": None,
                       "HelpURL": None, "StackTraceString": stack_of(error), "RemoteStackTraceString": None,
                       "RemoteStackIndex": 0, "ExceptionMethod": None, "HResult": -2146233088, "Source": None,
                       "WatsonBuckets": None}, separators=(",", ":"))


def activity_failed_fields(activity: str, error: BaseException) -> dict:
    """Reason, Details and FailureDetails of the TaskFailed event for a failed activity."""
    return {"Reason": f"Activity function '{activity}' failed: {type(error).__name__}: {error}",
            "Details": serialized_exception(error), "FailureDetails": failure_details(error)}
