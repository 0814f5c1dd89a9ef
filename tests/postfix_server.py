"""A private, real Postfix for the tests, driven by ``swaks``.

    postfix = PrivatePostfix([policy_port_1, policy_port_2])   # one smtpd listener each
    postfix.start()
    sent = await postfix.send(0, client="10.0.0.1", login="alice", to=["bob@example.org"])
    assert sent.accepted, sent.transcript
    postfix.stop()

Debian's Postfix 3.7 binaries with their own ``config_directory``, ``queue_directory`` and
``data_directory`` under a temporary folder, never the system's ``/etc/postfix``: its
own master (the lock is in ``data_directory``), its own log file (``maillog_file``,
written by postlogd, so no syslog is needed), no chroot. Listener ``i`` is an smtpd on
its own loopback port whose recipient, DATA and end-of-data restrictions ask the policy
service on ``policy_ports[i]`` (the agent beside it, as on a farm of mail servers).
Accepted mail goes to the ``discard`` transport, so nothing leaves the machine.

``swaks`` speaks SMTP to it. ``XCLIENT`` (``smtpd_authorized_xclient_hosts`` is
loopback) sets the client address and ``LOGIN``, which Postfix passes to the policy
service as ``sasl_username`` (with ``sasl_method=XCLIENT``): SASL quotas are tested
without a SASL backend. Starting Postfix needs root (its master runs as root and its
daemons as the ``postfix`` user); ``missing()`` says why the tests cannot run, and how
to install what lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.agents import Farm
from tests.redis_servers import free_port

INSTALL = (
    "install Debian's postfix and swaks: DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "postfix swaks, then stop the system's service (service postfix stop); .ci/run does this"
)

#: smtpd's answer when the policy service cannot be reached (main.cf below)
POLICY_DOWN = "451 4.3.5"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = mx.test.invalid
mydomain = test.invalid
myorigin = $myhostname
mydestination =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 0.0.0.0/0
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = discard:
relay_transport = discard:
local_transport = discard:
smtputf8_enable = no
biff = no
# One try, no retry delay: an agent that is gone answers the default action at once.
smtpd_policy_service_try_limit = 1
smtpd_policy_service_timeout = 10s
smtpd_policy_service_default_action = 451 4.3.5 Server configuration problem
{policies}
"""

MASTER_CF = """\
{listeners}
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

LISTENER = """\
127.0.0.1:{port} inet n - n - - smtpd
  -o syslog_name=postfix/listener{i}
  -o smtpd_recipient_restrictions=$policy{i},permit
  -o smtpd_data_restrictions=$policy{i},permit
  -o smtpd_end_of_data_restrictions=$policy{i},permit"""


def missing() -> str | None:
    """Why a private Postfix cannot run here (and how to fix it), or None."""
    lacking = [p for p in ("postfix", "swaks") if _which(p) is None]
    if lacking:
        return f"{' and '.join(lacking)} not installed: {INSTALL}"
    if os.geteuid() != 0:
        return "a private Postfix needs root (its master runs as root)"
    try:
        subprocess.run(["id", "postfix"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return f"no postfix user: {INSTALL}"
    return None


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")


@dataclass
class Sent:
    """What one swaks run saw: its exit code and the SMTP transcript."""

    code: int
    transcript: str

    @property
    def accepted(self) -> bool:
        """The message was queued (250 after the final dot)."""
        return self.queue_id is not None

    @property
    def queue_id(self) -> str | None:
        found = re.search(r"<-\s+250 2\.0\.0 Ok: queued as (\w+)", self.transcript)
        return found.group(1) if found else None

    def replies(self, command: str) -> list[str]:
        """The server's reply lines to every ``command`` (``RCPT``, ``DATA``, ``.``), in
        order: e.g. ``["250 2.1.5 Ok", "450 4.7.1 <...>: Recipient address rejected"]``."""
        out: list[str] = []
        waiting = False
        for line in self.transcript.splitlines():
            if line.startswith((" -> ", "~> ")):
                sent = line[4:]
                waiting = sent == command if command == "." else sent.startswith(command)
            elif waiting and (m := re.match(r"<[-*~]+\s+(\d{3}[ -].*)", line)):
                out.append(m.group(1))
                waiting = m.group(1)[3] == "-"  # a multi-line reply goes on
        return out


class PrivatePostfix:
    """A Postfix instance of its own under a temporary folder, one smtpd per policy port."""

    def __init__(self, policy_ports: Sequence[int | Path]) -> None:
        self.policy_ports = list(policy_ports)  # a port on loopback, or a Unix socket
        self.ports = [free_port() for _ in self.policy_ports]
        # Postfix's daemons run as the postfix user: every folder above theirs must be
        # searchable (pytest's tmp_path is under a root-only folder).
        self.root = Path(tempfile.mkdtemp(prefix="mcluster-postfix-"))
        self.root.chmod(0o755)
        self.conf, self.queue, self.data = (self.root / d for d in ("conf", "queue", "data"))
        self.maillog = self.root / "maillog"
        self.bodies = self.root / "bodies"
        self.started = False

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_which("postfix") or "postfix", "-c", str(self.conf), *args],
            capture_output=True, text=True, check=check, timeout=60,
        )  # fmt: skip

    def start(self) -> None:
        for folder in (self.conf, self.queue, self.data, self.bodies):
            folder.mkdir(exist_ok=True)
        shutil.chown(self.data, "postfix")
        self.bodies.chmod(0o755)
        policies = "\n".join(
            f"policy{i} = check_policy_service {policy_endpoint(port)}"
            for i, port in enumerate(self.policy_ports)
        )
        (self.conf / "main.cf").write_text(
            MAIN_CF.format(queue=self.queue, data=self.data, root=self.root, policies=policies)
        )
        listeners = "\n".join(LISTENER.format(port=port, i=i) for i, port in enumerate(self.ports))
        (self.conf / "master.cf").write_text(MASTER_CF.format(listeners=listeners))
        result = self._postfix("start", check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"postfix -c {self.conf} start failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}\nmaillog:\n{self.log()[-3000:]}"
            )
        self.started = True

    def stop(self) -> None:
        """Stop this instance (never the system's) and remove its folder."""
        if self.started:
            result = self._postfix("stop", check=False)
            if result.returncode != 0:  # last resort: its master only, by its pid file
                pid_file = self.queue / "pid" / "master.pid"
                if pid_file.exists():
                    subprocess.run(["kill", "-9", pid_file.read_text().strip()], check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first line of the log matching ``pattern`` (a regex), once it is there."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while (found := regex.search(self.log())) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no line matching {pattern!r} in Postfix's log within {timeout} s; "
                    f"it ends:\n{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.05)
        return found

    def queued(self, queue: str) -> list[str]:
        """The queue ids in one of this instance's queues (``hold``, ``deferred`` ...)."""
        folder = self.queue / queue
        return sorted(p.name for p in folder.rglob("*") if p.is_file())

    def body(self, size: int) -> Path:
        """A message body file of about ``size`` bytes (lines of 76 characters)."""
        path = self.bodies / f"{size}.txt"
        if not path.exists():
            line = "x" * 76 + "\n"
            path.write_text(line * max(1, size // len(line)))
        return path

    async def send(
        self,
        listener: int,
        *,
        client: str,
        sender: str = "alice@example.net",
        to: Sequence[str] = ("bob@example.org",),
        login: str | None = None,
        size: int | None = None,
        timeout: float = 30.0,
    ) -> Sent:
        """One message through listener ``listener`` with swaks: ``XCLIENT ADDR=client``
        (and ``LOGIN=login``), ``MAIL FROM:<sender>`` (``""`` is the null sender), one
        ``RCPT TO`` per address; a body of about ``size`` bytes when given."""
        args = [
            _which("swaks") or "swaks", "--server", f"127.0.0.1:{self.ports[listener]}",
            "--ehlo", "client.test.invalid", "--xclient-addr", client,
            "--from", sender or "<>", "--to", ",".join(to), "--timeout", "20",
        ]  # fmt: skip
        if login is not None:
            args += ["--xclient-login", login]
        if size is not None:
            args += ["--body", str(self.body(size))]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
        return Sent(proc.returncode or 0, out.decode(errors="replace"))


@dataclass
class Mx:
    """A private Postfix and the farm of agents its listeners ask (listener ``i`` asks
    agent ``n{i+1}``)."""

    postfix: PrivatePostfix
    farm: Farm

    def agent(self, listener: int) -> str:
        return f"n{listener + 1}"

    def policy_args(self, listener: int) -> list[str]:
        # the agent's --policy is main.cf's name without "inet:" (unix:PATH is the same)
        return [
            "--policy",
            policy_endpoint(self.postfix.policy_ports[listener]).removeprefix("inet:"),
        ]

    async def restart(self, listener: int) -> None:
        """Start the agent of ``listener`` again (after a kill), on the same policy port."""
        self.farm.spawn(self.agent(listener), args=self.policy_args(listener))
        await self.farm.wait_healthy(self.agent(listener))


def policy_endpoint(where: int | Path) -> str:
    """main.cf's name of a policy service: ``inet:127.0.0.1:PORT`` or ``unix:PATH``."""
    return f"unix:{where}" if isinstance(where, Path) else f"inet:127.0.0.1:{where}"


@contextlib.asynccontextmanager
async def mx_farm(
    workdir: Path, policy: str, listeners: int = 2, unix: bool = False
) -> AsyncIterator[Mx]:
    """A farm of ``listeners`` agents (config ``policy`` beside the farm's cluster scope)
    and a private Postfix with one smtpd listener asking each; with ``unix`` each agent
    serves on a Unix socket (in a folder the postfix user can reach), not a TCP port."""
    farm = Farm(workdir, extra=policy)
    if unix:
        sockets = Path(tempfile.mkdtemp(prefix="mcluster-policy-sockets-"))
        sockets.chmod(0o755)
        ends: list[int | Path] = [sockets / f"policy{i}.sock" for i in range(listeners)]
    else:
        ends = [free_port() for _ in range(listeners)]
    postfix = PrivatePostfix(ends)
    mx = Mx(postfix, farm)
    try:
        await asyncio.gather(
            *(farm.start(mx.agent(i), args=mx.policy_args(i)) for i in range(listeners)),
            asyncio.to_thread(postfix.start),
        )
        yield mx
    finally:
        postfix.stop()
        await farm.close()
        if unix:
            shutil.rmtree(sockets, ignore_errors=True)


def smtp_session(
    port: int, client: str, sender: str = "alice@example.net", login: str = ""
) -> smtplib.SMTP:
    """An SMTP session up to an accepted MAIL FROM (XCLIENT sets the client address, and
    the SASL login when given); the caller goes on with RCPT."""
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=20)
    smtp.ehlo("client.test.invalid")
    attrs = f"ADDR={client}" + (f" LOGIN={login}" if login else "")
    code, text = smtp.docmd("XCLIENT", attrs)
    assert code == 220, (code, text)  # XCLIENT starts a new session
    smtp.ehlo("client.test.invalid")
    code, text = smtp.mail(sender)
    assert code == 250, (code, text)
    return smtp
