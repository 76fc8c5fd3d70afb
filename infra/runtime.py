"""Java and Maven: check they are present, and resolve server jars from Maven Central once.

Jars are copied into ``<state_dir>/lib/<server>-<version>/`` by Maven's dependency plugin;
a ``.complete`` stamp marks a finished copy, so a later start resolves nothing.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from carls.infra.errors import InfraError, ToolMissingError

log = logging.getLogger(__name__)

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_JAVA_HINT = "install a Java 17+ JDK (Debian/Ubuntu: apt-get install openjdk-17-jdk-headless)"
_MAVEN_HINT = "install Apache Maven 3.6+ (Debian/Ubuntu: apt-get install maven)"


def java_major_version(java: str = "java") -> int:
    """The major version of ``java``; raises :class:`ToolMissingError` if absent or < 17."""
    if shutil.which(java) is None:
        raise ToolMissingError(f"Java was not found on PATH (looked for {java!r})", hint=_JAVA_HINT)
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, check=False, timeout=60
    ).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise ToolMissingError(
            f"could not read the Java version from: {out.strip()!r}", hint=_JAVA_HINT
        )
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < 17:
        raise ToolMissingError(
            f"Java {major} found; Kafka 4 and Cassandra 5 need Java 17+", hint=_JAVA_HINT
        )
    return major


def resolve_jars(
    server: str,
    version: str,
    lib_root: Path,
    maven: str = "mvn",
    extra_properties: dict[str, str] | None = None,
) -> Path:
    """Return the folder holding ``server``'s runtime jars, resolving them on first use."""
    target = lib_root / f"{server}-{version}"
    if (target / ".complete").exists():
        return target
    if shutil.which(maven) is None:
        raise ToolMissingError(
            f"Maven was not found on PATH (looked for {maven!r}); it resolves the "
            f"{server} {version} jars from Maven Central on first start",
            hint=_MAVEN_HINT,
        )
    pom = resources.files("carls.infra") / "maven" / server / "pom.xml"
    staging = lib_root / f".{server}-{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    props = {f"{server}.version": version, **(extra_properties or {})}
    cmd = [
        maven,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
        *(f"-D{k}={v}" for k, v in props.items()),
    ]
    log.info("resolving %s %s jars from Maven Central (first start only)", server, version)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise InfraError(
            f"Maven could not resolve {server} {version}",
            hint="check network access to Maven Central and the version",
            log_tail=tail,
        )
    if not any(staging.glob("*.jar")):
        raise InfraError(f"Maven resolved no jars for {server} {version}")
    (staging / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def classpath(lib: Path) -> str:
    return ":".join(str(p) for p in sorted(lib.glob("*.jar")))
