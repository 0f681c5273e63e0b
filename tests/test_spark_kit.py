"""scripts/spark_kit.py's pruning rules, on small hand-made jars and a class-load log (the whole
build, which runs the job twice and takes minutes, is checked by the build itself)."""

from __future__ import annotations

import os
import tarfile
import zipfile

from scripts.spark_kit import WHOLE_JAR_BYTES, loaded_packages, prune_jar, unpack

CLASS_LOG = """\
[0.101s][info][class,load] java.lang.Object source: shared objects file
[3.482s][info][class,load] com.sun.security.auth.UnixNumericUserPrincipal source: jrt:/jdk.security.auth
[4.063s][info][class,load] org.example.used.Thing$Inner source: file:/x/pyspark/jars/big.jar
[4.070s][info][class,load] org.example.Top source: jar:file:/x/pyspark/jars/big.jar!/
"""


def make_jar(path, names):
    """A jar over WHOLE_JAR_BYTES (pruned, not kept whole) holding `names`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as jar:
        for name in names:
            jar.writestr(name, os.urandom(WHOLE_JAR_BYTES // len(names) + 1))


def test_loaded_packages_come_from_jars_only(tmp_path):
    log = tmp_path / "classes.log"
    log.write_text(CLASS_LOG)
    assert loaded_packages(log) == {"org/example/used", "org/example"}


def test_prune_keeps_loaded_packages_resources_and_this_platform(tmp_path):
    source, target = tmp_path / "big.jar", tmp_path / "out.jar"
    make_jar(source, [
        "org/example/Top.class", "org/example/used/Thing.class", "org/example/used/Other.class",
        "org/example/unused/Never.class", "META-INF/services/org.example.Service", "META-INF/SIGNER.SF",
        "META-INF/INDEX.LIST", "org/xerial/snappy/native/Linux/x86_64/libsnappyjava.so",
        "org/xerial/snappy/native/Linux/aarch64/libsnappyjava.so", "org/xerial/snappy/native/Mac/x86_64/x.dylib",
        "com/ibm/icu/impl/data/icudata/coll/root.res", "com/ibm/icu/impl/data/icudata/coll/res_index.res",
        "com/ibm/icu/impl/data/icudata/coll/de.res", "com/ibm/icu/impl/data/icudata/zone/tz.res",
        "com/ibm/icu/impl/data/icudata/uprops.icu",
    ])
    kept = prune_jar(source, target, {"org/example", "org/example/used"})
    with zipfile.ZipFile(target) as jar:
        names = set(jar.namelist())
        assert {entry.compress_type for entry in jar.infolist()} == {zipfile.ZIP_STORED}
        assert jar.read("org/example/Top.class") == zipfile.ZipFile(source).read("org/example/Top.class")
    assert kept == 3
    assert names == {
        "org/example/Top.class", "org/example/used/Thing.class", "org/example/used/Other.class",
        "META-INF/services/org.example.Service", "org/xerial/snappy/native/Linux/x86_64/libsnappyjava.so",
        "com/ibm/icu/impl/data/icudata/coll/root.res", "com/ibm/icu/impl/data/icudata/coll/res_index.res",
        "com/ibm/icu/impl/data/icudata/uprops.icu",
    }


def test_a_jar_without_loaded_classes_is_dropped_and_a_small_one_kept_whole(tmp_path):
    big, small = tmp_path / "big.jar", tmp_path / "small.jar"
    make_jar(big, ["org/unused/A.class"])
    with zipfile.ZipFile(small, "w") as jar:
        jar.writestr("org/unused/B.class", b"\xca\xfe\xba\xbe")
    assert prune_jar(big, tmp_path / "big-out.jar", set()) == 0
    assert not (tmp_path / "big-out.jar").exists()
    assert prune_jar(small, tmp_path / "small-out.jar", set()) == 1


def make_kit(kit, tmp_path, content: str, jar_name: str = "a.jar"):
    kit.mkdir(exist_ok=True)
    for name, member in (("jre.txz", "jre/bin/java"), ("jars.txz", f"site/pyspark/jars/{jar_name}"),
                         ("py.txz", "site/pyspark/__init__.py")):
        (tmp_path / "file").write_text(content)
        with tarfile.open(kit / name, "w:xz") as archive:
            archive.add(tmp_path / "file", arcname=member)


def test_unpack_gives_java_and_the_kits_python_first(tmp_path):
    kit = tmp_path / "kit"
    make_kit(kit, tmp_path, "x")
    target = tmp_path / "unpacked"
    env = unpack(kit, target)
    assert (target / "jre" / "bin" / "java").is_file() and (target / "site" / "pyspark" / "jars" / "a.jar").is_file()
    assert env["JAVA_HOME"] == str(target / "jre") and env["PATH"].startswith(f"{target / 'jre'}/bin:")
    assert env["PYTHONPATH"].split(":")[0] == str(target / "site")


def test_a_rebuilt_kit_replaces_what_was_unpacked_before(tmp_path):
    kit, target = tmp_path / "kit", tmp_path / "unpacked"
    make_kit(kit, tmp_path, "old")
    unpack(kit, target)
    make_kit(kit, tmp_path, "new, longer", jar_name="b.jar")
    unpack(kit, target)
    assert (target / "jre" / "bin" / "java").read_text() == "new, longer"
    assert sorted(p.name for p in (target / "site" / "pyspark" / "jars").iterdir()) == ["b.jar"]
