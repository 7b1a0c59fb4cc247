"""The flow's watch on its Prefect server: what counts as an answer, and what as a lost server.
(The whole of it, a run whose temporary server is killed mid-stage: test_signals_...)"""

import http.server
import socket
import threading

import pytest

from flows.server import health


def serve(status: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("status", [200, 401, 503])
def test_any_http_status_is_an_answer_so_a_server_wanting_credentials_is_not_lost(status):
    server = serve(status)
    try:
        assert health(f"http://127.0.0.1:{server.server_port}/api/") == "answers"
    finally:
        server.shutdown()


def test_a_closed_port_is_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert health(f"http://127.0.0.1:{port}/api") == "refused"


def test_a_server_that_accepts_and_never_answers_is_silent(monkeypatch):
    import flows.server

    monkeypatch.setattr(flows.server, "HEALTH_TIMEOUT_S", 0.5)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        assert health(f"http://127.0.0.1:{sock.getsockname()[1]}/api") == "silent"
