"""Java and Spark packed small enough to carry, to run the whole job where only Python is installed.

The GPU machine this project is sometimes lent has Python, torch and pandas, but no Java, no
PySpark and no package registry, and takes at most 64 MiB of files along with the working tree:
`scripts/bench_executors.py` can time what a GPU executor runs there, but not `spark-submit`.
This script makes that possible in two steps.

`build` (here, with a JDK and the project's .venv) writes into --out:
- `jre.txz`: a Java runtime made by `jlink` from this JDK, with only the modules Spark uses;
- `jars.txz`: PySpark's jars, pruned to the Java packages that a recorded run of the job loaded
  (`-Xlog:class+load`). Whole packages, not single classes: some classes load only on some data
  or timing paths (measured: pruned class by class, an executor's task runner died on a missing
  class that the recorded run had not needed, and the job hung). Line numbers and most local
  variable names are stripped from the classes, and entries are stored uncompressed so that xz
  compresses across them;
- `py.txz`: PySpark's Python side, py4j, and boto3 with the libraries it needs;
- `images/`: every k-th photo of --images, at most --image-count (bench.py repeats them).
Then it runs the job once more with the kit alone (unpacked as `run` does), so that a kit that
cannot run the job is found here and not on the lent machine. Measured on 2 cores: about 6
minutes; 57 MiB in all (jars 36.7, Java 16.7, Python 1.6, 40 photos 2.0).

`run` (there, with Python only) unpacks the kit, puts Java on PATH and the kit's Python
packages on PYTHONPATH, and runs the rest of the command line with this Python:

    .venv/bin/python scripts/spark_kit.py build --out .devcarry --images ../shared/data/stanford_dogs_sample
    python3 scripts/spark_kit.py run --kit .devcarry -- scripts/bench.py --images .devcarry/images \\
        --device cuda --no-s3 --copies 1200 --job-slots 8 --job-arg=--decode-threads=2 --out "$OUT/gpu"

(That machine's image has pandas, pyarrow, matplotlib, timm and torchvision; the kit brings what
it lacks. Add `--job-arg=--no-report` where matplotlib is missing.)

The kit is a measuring tool, not a way to deploy the job: clusters have Java and PySpark.
Keep --out out of git (the photos are ImageNet-licensed; `.devcarry/` is in .gitignore).
"""

from __future__ import annotations

import argparse
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent

# Modules Spark 4 loads in local mode (jdk.incubator.vector: Spark adds it to every JVM it starts).
JAVA_MODULES = ("java.base,java.desktop,java.logging,java.management,java.naming,java.security.jgss,java.sql,"
                "java.xml,jdk.jfr,jdk.localedata,jdk.management,jdk.management.jfr,jdk.net,"
                "jdk.security.auth,jdk.unsupported,jdk.zipfs,java.scripting,java.instrument,jdk.crypto.ec,"
                "java.security.sasl,java.net.http,jdk.incubator.vector")
WHOLE_JAR_BYTES = 300_000  # small jars are kept whole: pruning them saves little and risks much
WHOLE_JARS = ("spark-launcher", "netty-transport-native-epoll")
# ICU data the job never reads: Spark uses ICU for collations, and reads only the root collation
# and the index of the others.
ICU_DATA_DROPPED = re.compile(r"com/ibm/icu/impl/data/icudata\w*/(brkitr|translit|curr|zone|region|lang|unit|rbnf)/"
                              r"|com/ibm/icu/impl/data/icudata\w*/coll/(?!root|ucadata|invuca|res_index|pool)")
# Native libraries for other systems than the one the JRE is made for (Linux x86_64).
OTHER_PLATFORM_NATIVE = re.compile(r"(?i)\.(dll|dylib|jnilib)$"
                                   r"|(aarch64|arm|ppc|s390|riscv|loongarch|musl|i386|/x86/|freebsd|aix|sunos).*\.so$")
SIGNATURES = re.compile(r"META-INF/(INDEX\.LIST|[^/]+\.(SF|RSA|DSA|EC))$")
PYSPARK_DROPPED = {"jars", "examples", "data", "ml", "mllib", "pandas", "licenses", "python",
                   "__pycache__"}
BOTOCORE_SERVICES = {"s3", "sts"}
PURE_PACKAGES = ("py4j", "boto3", "s3transfer", "jmespath", "urllib3")
STRIP_DEBUG_JAVA = """\
import java.io.*;
import java.util.zip.*;
import org.apache.xbean.asm9.*;

/** For each pair of arguments IN OUT: copy jar IN to OUT, entries stored, classes without line
 * numbers, source file names and local variable names, except constructors' (jackson-module-scala
 * reads constructor parameter names from them to build Spark's case classes from JSON). */
public class StripDebug {
    static byte[] strip(byte[] data) {
        ClassWriter writer = new ClassWriter(0);
        new ClassReader(data).accept(new ClassVisitor(Opcodes.ASM9, writer) {
            @Override public void visitSource(String source, String debug) {}
            @Override public MethodVisitor visitMethod(int access, String name, String descriptor, String signature,
                                                       String[] exceptions) {
                boolean keepNames = name.equals("<init>");
                MethodVisitor next = super.visitMethod(access, name, descriptor, signature, exceptions);
                return new MethodVisitor(Opcodes.ASM9, next) {
                    @Override public void visitLineNumber(int line, Label start) {}
                    @Override public void visitLocalVariable(String local, String type, String generic, Label start,
                                                             Label end, int index) {
                        if (keepNames) super.visitLocalVariable(local, type, generic, start, end, index);
                    }
                };
            }
        }, 0);
        return writer.toByteArray();
    }

    public static void main(String[] args) throws IOException {
        for (int i = 0; i + 1 < args.length; i += 2) {
            try (ZipInputStream in = new ZipInputStream(new FileInputStream(args[i]));
                 ZipOutputStream out = new ZipOutputStream(new FileOutputStream(args[i + 1]))) {
                out.setMethod(ZipOutputStream.STORED);
                for (ZipEntry entry; (entry = in.getNextEntry()) != null; ) {
                    byte[] data = in.readAllBytes();
                    if (entry.getName().endsWith(".class")) data = strip(data);
                    ZipEntry copy = new ZipEntry(entry.getName());
                    copy.setTime(entry.getTime());
                    copy.setSize(data.length);
                    CRC32 crc = new CRC32();
                    crc.update(data);
                    copy.setCrc(crc.getValue());
                    out.putNextEntry(copy);
                    out.write(data);
                    out.closeEntry();
                }
            }
        }
    }
}
"""
LOADED_FROM = re.compile(r"\[class,load\] ([\w.$]+) source: .*\.jar")


# ---------------------------------------------------------------- build (here) ---------------
def site_packages() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent.parent


def make_jre(target: Path) -> Path:
    jre = target / "jre"
    subprocess.run(["jlink", "--add-modules", JAVA_MODULES, "--output", str(jre), "--strip-debug",
                    "--no-header-files", "--no-man-pages", "--compress=0", "--include-locales=en"], check=True)
    libjvm = jre / "lib" / "server" / "libjvm.so"
    if shutil.which("strip") and libjvm.exists():
        subprocess.run(["strip", "--strip-unneeded", str(libjvm)], check=True)
    return jre


def run_job(env: dict[str, str], spark_home: Path, images: Path, work: Path, class_log: Path | None = None) -> None:
    """The job as bench.py runs it (local mode, the local properties), without the report, on a few images."""
    java_options = "-XX:TieredStopAtLevel=1"
    if class_log is not None:
        java_options += f" -Xlog:class+load=info:file={class_log}"
    env = {**os.environ, "SPARK_HOME": str(spark_home), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", **env}
    command = [str(spark_home / "bin" / "spark-submit"), "--master", "local[2]",
               "--properties-file", str(PROJECT / "conf" / "spark-defaults.local.conf"),
               "--conf", f"spark.driver.extraJavaOptions={java_options}",
               str(PROJECT / "jobs" / "infer_dogs.py"), "--input", str(images), "--output", str(work / "run"),
               "--model", "mobilenet_v3_small", "--random-weights", "0", "--mode", "overwrite", "--no-report"]
    log_file = work / "job.log"
    with open(log_file, "w") as out:
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    if result.returncode != 0:
        shutil.copyfile(log_file, PROJECT / "spark-kit-job.log")
        raise SystemExit(f"spark_kit: the job exited {result.returncode} with JAVA_HOME={env['JAVA_HOME']}; "
                         "see spark-kit-job.log")


def java_env(java_home: Path) -> dict[str, str]:
    return {"JAVA_HOME": str(java_home), "PATH": f"{java_home}/bin:{os.environ.get('PATH', '')}"}


def loaded_packages(class_log: Path) -> set[str]:
    packages = set()
    for line in class_log.read_text(errors="replace").splitlines():
        found = LOADED_FROM.search(line)
        if found:
            packages.add(found.group(1).rpartition(".")[0].replace(".", "/"))
    return packages


def prune_jar(source: Path, target: Path, packages: set[str]) -> int:
    """Copy `source` with only the classes of `packages` (all of it when small), entries stored;
    the number of classes kept (0: no copy written)."""
    whole = source.stat().st_size < WHOLE_JAR_BYTES or source.name.startswith(WHOLE_JARS)
    kept = 0
    with zipfile.ZipFile(source) as jar, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for entry in jar.infolist():
            name = entry.filename
            if SIGNATURES.match(name) or ICU_DATA_DROPPED.match(name) or OTHER_PLATFORM_NATIVE.search(name):
                continue
            if name.endswith(".class"):
                if not whole and name.rpartition("/")[0] not in packages:
                    continue
                kept += 1
            out.writestr(zipfile.ZipInfo(name, entry.date_time), jar.read(entry), zipfile.ZIP_STORED)
    if kept == 0:
        target.unlink()
    return kept


def prune_jars(jars: Path, target: Path, packages: set[str], work: Path) -> None:
    """Pruned copies of the jars, then without most debug information: line numbers, source file
    names and local variable names outside constructors (stack traces from the kit lose their
    line numbers). Stripped of all of it, Spark failed to start: jackson-module-scala reads
    constructor parameter names from it. The stripping uses the ASM that Spark ships."""
    pruned = work / "pruned"
    pruned.mkdir()
    for jar in sorted(jars.glob("*.jar")):
        prune_jar(jar, pruned / jar.name, packages)
    asm = next(jars.glob("xbean-asm9-shaded-*.jar"))
    (work / "StripDebug.java").write_text(STRIP_DEBUG_JAVA)
    subprocess.run(["javac", "-cp", str(asm), "-d", str(work), str(work / "StripDebug.java")], check=True)
    target.mkdir()
    pairs = [str(path) for jar in sorted(pruned.glob("*.jar")) for path in (jar, target / jar.name)]
    subprocess.run(["java", "-cp", f"{asm}{os.pathsep}{work}", "StripDebug", *pairs], check=True)


def python_files(root: Path, keep) -> list[tuple[Path, str]]:
    return [(path, path.relative_to(root.parent).as_posix()) for path in sorted(root.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and keep(path.relative_to(root).parts)]


def python_side(site: Path) -> list[tuple[Path, str]]:
    """PySpark (without its jars and the parts the job does not use), py4j, boto3 and its libraries."""
    files = python_files(site / "pyspark", lambda parts: parts[0] not in PYSPARK_DROPPED)
    for name in PURE_PACKAGES:
        files += python_files(site / name, lambda parts: True)
    files += python_files(site / "botocore", lambda parts: parts[0] != "data" or len(parts) == 2
                          or parts[1] in BOTOCORE_SERVICES)
    return files


def write_txz(target: Path, members: list[tuple[Path, str]]) -> None:
    with tarfile.open(target, "w:xz", preset=9 | lzma.PRESET_EXTREME) as archive:
        for path, name in members:
            archive.add(path, arcname=name, recursive=False)


def tree(root: Path, under: str) -> list[tuple[Path, str]]:
    return [(path, f"{under}/{path.relative_to(root).as_posix()}") for path in sorted(root.rglob("*"))
            if path.is_file()]


def copy_images(images: Path, target: Path, count: int) -> Path:
    source = images / "Images" if (images / "Images").is_dir() else images
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    step = max(1, len(photos) // max(count, 1))
    for photo in photos[::step][:count]:
        copy = target / "Images" / photo.parent.name / photo.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, copy)
    return target


def build(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    site = site_packages()
    with tempfile.TemporaryDirectory(prefix="spark-kit-") as scratch:
        work = Path(scratch)
        images = copy_images(Path(args.images), out / "images", args.image_count)
        print("spark_kit: jlink ...", flush=True)
        jre = make_jre(work)
        print("spark_kit: recording the classes the job loads ...", flush=True)
        class_log = work / "classes.log"
        run_job(java_env(jre), site / "pyspark", images, work, class_log)
        packages = loaded_packages(class_log)
        print(f"spark_kit: {len(packages)} Java packages loaded; pruning the jars and compressing ...", flush=True)
        prune_jars(site / "pyspark" / "jars", work / "jars", packages, work)
        write_txz(out / "jre.txz", tree(jre, "jre"))
        write_txz(out / "jars.txz", tree(work / "jars", "site/pyspark/jars"))
        write_txz(out / "py.txz", [(path, f"site/{name}") for path, name in python_side(site)])
        print("spark_kit: checking the job with the kit alone ...", flush=True)
        unpacked = work / "unpacked"
        run_job(unpack(out, unpacked), unpacked / "site" / "pyspark", images, work)
    sizes = {path.name: path.stat().st_size for path in out.glob("*.txz")}
    image_bytes = sum(p.stat().st_size for p in images.rglob("*") if p.is_file())
    total = sum(sizes.values()) + image_bytes
    for name, size in sorted(sizes.items()):
        print(f"  {name:10} {size / 2**20:6.1f} MiB")
    print(f"  images     {image_bytes / 2**20:6.1f} MiB\n  total      {total / 2**20:6.1f} MiB (carry limit 64 MiB "
          "with the working tree)")
    return 0


# ---------------------------------------------------------------- run (there) ----------------
def unpack(kit: Path, target: Path) -> dict[str, str]:
    """Unpack the archives (again only when they changed: a warm machine keeps `target` between
    calls, and a rebuilt kit must not run on the old files); the environment that runs the job."""
    archives = [kit / name for name in ("jre.txz", "jars.txz", "py.txz")]
    fingerprint = "\n".join(f"{path.name} {path.stat().st_size} {path.stat().st_mtime_ns}" for path in archives)
    ready = target / "ready"
    if not ready.exists() or ready.read_text() != fingerprint:
        shutil.rmtree(target, ignore_errors=True)
        for path in archives:
            with tarfile.open(path) as archive:
                archive.extractall(target, filter="fully_trusted")  # our own archives, links and modes kept
        ready.write_text(fingerprint)
    return {**java_env(target / "jre"),
            "PYTHONPATH": os.pathsep.join([str(target / "site"), str(PROJECT), os.environ.get("PYTHONPATH", "")]),
            "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("spark_kit run: nothing to run (give the script and its arguments after --)")
    env = {**os.environ, **unpack(Path(args.kit).resolve(), Path(args.unpack_to))}
    print(f"spark_kit: Java {env['JAVA_HOME']}, PySpark and py4j from {args.unpack_to}/site", flush=True)
    return subprocess.run([sys.executable, *command], env=env, cwd=PROJECT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="step", required=True)
    make = commands.add_parser("build", help="make the kit here (needs a JDK and the project's .venv)")
    make.add_argument("--out", required=True)
    make.add_argument("--images", required=True, help="a Stanford-Dogs-style tree to take photos from")
    make.add_argument("--image-count", type=int, default=40)
    use = commands.add_parser("run", help="unpack the kit and run a Python script with Java and Spark")
    use.add_argument("--kit", required=True)
    use.add_argument("--unpack-to", default=str(Path(tempfile.gettempdir()) / "spark-kit"))
    use.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    return build(args) if args.step == "build" else run(args)


if __name__ == "__main__":
    sys.exit(main())
