"""The delivery's request against a real HTTP server on loopback: the read and whole-request timeouts,
the response-size cap, and redirects (not followed). In-process, with small limits passed as
``transport.Limits`` (the defaults are the documented 5 s / 10 s / 15 s / 64 KiB)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

import outbox
from tests.webhooks.conftest import NEW_SECRET, OLD_SECRET
from tests.webhooks.test_units import announcement
from tierbox.webhooks import deliver, queries, transport

SECRETS = [OLD_SECRET, NEW_SECRET]
SMALL = transport.Limits(connect_s=1.0, read_s=0.5, total_s=1.5, max_response_bytes=4096)


@pytest.fixture
def server(allow_loopback: None) -> Iterator[HTTPServer]:
    """A threaded server, so a handler still sleeping or writing does not hold up the next request or
    the server's stop."""
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    yield srv
    srv.clear()
    if srv.is_running():
        srv.stop()


def sent_to(srv: HTTPServer, path: str = "/hooks") -> queries.Announcement:
    return announcement("succeeded", url=srv.url_for(path))


async def test_a_receiver_that_does_not_answer_in_time_is_a_retryable_failure(server: HTTPServer) -> None:
    arrived: list[str | None] = []

    def silent(request: Request) -> Response:
        arrived.append(request.headers.get("webhook-id"))
        time.sleep(2.0)  # past the read timeout (0.5 s) and the whole request's (1.5 s)
        return Response("", status=204)

    server.expect_request("/hooks", method="POST").respond_with_handler(silent)
    began = time.monotonic()
    with pytest.raises(deliver.DeliveryError, match=r"no answer \(ReadTimeout") as err:
        await deliver.send(sent_to(server), SECRETS, SMALL)
    took = time.monotonic() - began
    assert 0.4 <= took < 1.4, took  # the read timeout, not the total nor the handler's 2 s
    assert not isinstance(err.value, outbox.Reject)
    assert deliver.TASK.retryable(err.value), "retried with back-off"
    assert arrived == ["msg_" + "0" * 31 + "7"], "the request was sent; its answer did not come"


async def test_an_answer_trickling_in_is_cut_by_the_whole_request_timeout(server: HTTPServer) -> None:
    """Each byte comes within the read timeout; only the total limit ends the request."""
    def trickle(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(40):  # 40 x 0.1 s: 4 s in all, each read waits 0.1 s
                yield b"."
                time.sleep(0.1)
        return Response(body(), status=200, direct_passthrough=True)

    server.expect_request("/hooks", method="POST").respond_with_handler(trickle)
    began = time.monotonic()
    with pytest.raises(deliver.DeliveryError, match=r"no answer \(TimeoutError") as err:
        await deliver.send(sent_to(server), SECRETS, SMALL)
    took = time.monotonic() - began
    assert 1.4 <= took < 3.0, took
    assert deliver.TASK.retryable(err.value)


async def test_a_large_answer_is_read_up_to_the_cap_and_no_further(server: HTTPServer) -> None:
    """An endless body: the request returns because the rest is never read."""
    def endless(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(1_000_000):  # 8 GiB: never reached unless the client reads it all
                yield b"x" * 8192
        return Response(body(), status=200, direct_passthrough=True)

    server.expect_request("/hooks", method="POST").respond_with_handler(endless)
    began = time.monotonic()
    answer = await deliver.send(sent_to(server), SECRETS, SMALL)
    assert time.monotonic() - began < 1.5
    assert answer.status == 200 and answer.truncated
    assert answer.snippet == "x" * transport.SNIPPET_CHARS
    deliver.judge(answer, sent_to(server), 1)  # a 2xx takes the delivery, whatever its body


@pytest.mark.parametrize(("size", "truncated"), [(4096, False), (4097, True), (10, False)])
async def test_truncated_says_whether_more_than_the_cap_was_sent(server: HTTPServer, size: int,
                                                                truncated: bool) -> None:
    server.expect_request("/hooks", method="POST").respond_with_data("é" * (size // 2) + "y" * (size % 2),
                                                                     status=503)
    answer = await deliver.send(sent_to(server), SECRETS, SMALL)
    assert (answer.status, answer.truncated) == (503, truncated)
    assert len(answer.snippet) == min(transport.SNIPPET_CHARS, size // 2 + size % 2)
    with pytest.raises(deliver.DeliveryError, match="answered 503"):
        deliver.judge(answer, sent_to(server), 1)


async def test_the_documented_limits_are_the_defaults() -> None:
    assert transport.LIMITS == transport.Limits(connect_s=5.0, read_s=10.0, total_s=15.0,
                                                max_response_bytes=64 * 1024)
    assert deliver.TASK.timeout_s is not None and deliver.TASK.timeout_s > transport.LIMITS.total_s


async def test_a_redirect_is_not_followed_and_is_dead_lettered(server: HTTPServer) -> None:
    server.expect_request("/hooks", method="POST").respond_with_response(
        Response("moved", status=302, headers={"Location": server.url_for("/elsewhere")}))
    server.expect_request("/elsewhere").respond_with_data("should not be called")
    a = sent_to(server)
    answer = await deliver.send(a, SECRETS, SMALL)
    assert answer.status == 302
    assert [entry[0].path for entry in server.log] == ["/hooks"], "the Location was not requested"
    with pytest.raises(outbox.Reject, match=r"answered 302: 'moved' \(redirects are not followed\)") as err:
        deliver.judge(answer, a, 1)
    assert err.value.fingerprint == "webhook-http-302"
    assert not deliver.TASK.retryable(err.value), "dead-lettered at once"
