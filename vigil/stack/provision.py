"""Find or install the programs the local stack runs.

Kafka's jars come from Maven Central into a cache outside the repository; Redis and
Prometheus come from Debian's packages; Triton is the server bundled in the
``nvidia-pytriton`` wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from vigil.errors import StackError

__all__ = ["debian_program", "kafka_classpath", "triton_server"]

_KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>org.vigil.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
"""


def kafka_classpath(cache_dir: Path, version: str) -> str:
    """Return a Java classpath for the Kafka broker, downloading it through Maven once.

    Args:
        cache_dir: Vigil's cache directory (outside the repository).
        version: Apache Kafka release, for example ``"3.9.1"``.

    Raises:
        StackError: Java or Maven is missing, or the download failed.
    """
    home = cache_dir / f"kafka-{version}"
    libs = home / "libs"
    done = home / ".complete"
    if not done.exists():
        if shutil.which("java") is None:
            raise StackError(
                "kafka: Java 17+ is required; install a JDK (apt-get install openjdk-17-jre)"
            )
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("kafka: Maven is required to fetch the broker; apt-get install maven")
        home.mkdir(parents=True, exist_ok=True)
        (home / "pom.xml").write_text(_KAFKA_POM.format(version=version))
        if libs.exists():
            shutil.rmtree(libs)
        result = subprocess.run(  # noqa: S603
            [
                mvn,
                "-q",
                "-B",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            cwd=home,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"kafka: Maven could not fetch Kafka {version}:\n{result.stdout[-2000:]}"
                f"{result.stderr[-2000:]}"
            )
        done.write_text(version)
    return f"{libs}/*"


def debian_program(program: str, package: str, *, install: bool) -> str:
    """Return the path of a program from a Debian package, installing it when allowed.

    Args:
        program: Executable name, for example ``"redis-server"``.
        package: Debian package that provides it.
        install: Whether ``apt-get install`` may be run (only as root).

    Raises:
        StackError: The program is missing and cannot be installed here; the message says
            how to install it.
    """
    found = shutil.which(program)
    if found is not None:
        return found
    how = f"sudo apt-get install -y {package}"
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(f"{program} not found; install it with: {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "install", "-y", "--no-install-recommends", package],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", package],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)  # noqa: S603
        if result.returncode == 0 and argv[1] == "install":
            break
    found = shutil.which(program)
    if found is None:
        raise StackError(
            f"{program}: apt-get failed; install it with: {how}\n{result.stderr[-1000:]}"
        )
    return found


def triton_server() -> Path:
    """Return the ``tritonserver`` binary bundled in ``nvidia-pytriton``, made runnable.

    The Python backend needs the stub matching the running Python beside
    ``libtriton_python.so``; the wheel ships the stubs in a separate folder, so the one for
    this interpreter is copied once.

    Raises:
        StackError: The wheel is not installed or lacks a stub for this Python.
    """
    purelib = Path(sysconfig.get_paths()["purelib"])
    root = purelib / "pytriton" / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.exists():
        raise StackError(
            "triton: the bundled server is missing; install it with: pip install 'icu-vigil[stack]'"
        )
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub_src = root / "python_backend_stubs" / py / "triton_python_backend_stub"
    stub_dst = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub_dst.exists():
        if not stub_src.exists():
            raise StackError(f"triton: no Python-backend stub for Python {py} in {root}")
        shutil.copy2(stub_src, stub_dst)
    return binary
