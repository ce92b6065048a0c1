"""`digits web`: the status page and /metrics over the service's Redis; `digits up` serves it too."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import secrets
import signal
import threading

from core.errors import ConfigError
from core.settings import Settings, add_flags

log = logging.getLogger(__name__)

FLAGS = ("broker_url", "inbox", "results", "processed", "templates", "weights", "pdf_dpi", "max_pixels", "web_host",
         "web_port", "web_token", "log_level")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, *FLAGS)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebServer:
    """The page served by waitress in a thread of this process."""

    def __init__(self, settings: Settings, url: str):
        from waitress.server import create_server

        from core.brokers import redis_client
        from web.app import create_app
        from web.sampler import Sampler
        from web.thumbnails import Thumbnails

        token = settings.web_token
        if not loopback(settings.web_host) and not token:
            token = secrets.token_urlsafe(24)  # beyond this machine, never without a token
        self.token = token
        self.sampler = Sampler(url, settings.results)
        thumbnails = Thumbnails(settings.results, [settings.processed, settings.inbox], pdf_dpi=settings.pdf_dpi,
                                max_pixels=settings.max_pixels)
        app = create_app(self.sampler, client=redis_client(url), results=settings.results,
                         template_folder=settings.template_folder, thumbnails=thumbnails, token=token)
        try:
            self.server = create_server(app, host=settings.web_host, port=settings.web_port, threads=4, ident="digits")
        except OSError as error:
            raise ConfigError(f"the web page cannot listen on {settings.web_host}:{settings.web_port}: "
                              f"{error.strerror or error}") from None
        self.address = f"http://{_host_in_url(settings.web_host)}:{self.server.effective_port}/"
        self._thread = threading.Thread(target=self.server.run, name="digits-web", daemon=True)

    @property
    def link(self) -> str:
        """The address to open: with the token when one is needed."""
        return f"{self.address}?token={self.token}" if self.token else self.address

    def start(self) -> "WebServer":
        self.sampler.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()
        self.server.close()


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings.log_once("web")
    server = WebServer(settings, settings.effective_broker_url).start()
    print(f"digits web: the status page is at {server.link}  (metrics at {server.address}metrics)", flush=True)
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0
