import CKilnSystem
import Foundation
import KilnModel
import KilnOCI
import Testing

@testable import KilnEngine
@testable import KilnInstances

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Fresh inputs: package upgrades, package sources and the reuse rule")
struct FreshnessTests {
    @Test("apt-get -s lines give name, installed and candidate versions and the origin; a new dependency has no installed version")
    func aptLines() {
        let lines = [
            "KILN-UPGRADE libc6 [2.36-9+deb12u4] (2.36-9+deb12u7 Debian-Security:12/stable-security [amd64]) []",
            "KILN-UPGRADE kiln-hello [1.0] (1.1 localhost [all])",
            "KILN-UPGRADE libnew1 (3.2-1 Debian:12.5/stable [amd64])",
            "Conf libc6 (2.36-9+deb12u7 Debian-Security:12/stable-security [amd64])",
        ]
        let upgrades = PackageManager.apt.parse(lines)
        #expect(
            upgrades == [
                PackageUpgrade(name: "kiln-hello", installed: "1.0", candidate: "1.1", origin: "localhost"),
                PackageUpgrade(
                    name: "libc6", installed: "2.36-9+deb12u4", candidate: "2.36-9+deb12u7", origin: "Debian-Security:12/stable-security"),
                PackageUpgrade(name: "libnew1", installed: "", candidate: "3.2-1", origin: "Debian:12.5/stable"),
            ])
        #expect(upgrades[1].isSecurity && !upgrades[0].isSecurity)
        #expect(upgrades[0].description == "kiln-hello 1.0 → 1.1" && upgrades[2].description == "libnew1 (new) → 3.2-1")
    }

    @Test("apk and dnf lines parse too")
    func apkAndDnfLines() {
        #expect(
            PackageManager.apk.parse(["KILN-UPGRADE musl-utils-1.2.4-r1 1.2.4-r2"]) == [
                PackageUpgrade(name: "musl-utils", installed: "1.2.4-r1", candidate: "1.2.4-r2")
            ])
        #expect(
            PackageManager.dnf.parse(["KILN-UPGRADE openssl 3.0.7-24.el9 3.0.7-25.el9 baseos"]) == [
                PackageUpgrade(name: "openssl", installed: "3.0.7-24.el9", candidate: "3.0.7-25.el9", origin: "baseos")
            ])
    }

    @Test("Only upgrades a fresh run did not already leave behind are news")
    func newUpgrades() {
        let stale = PackageUpgrade(name: "libc6", installed: "1", candidate: "2")
        let hello = PackageUpgrade(name: "kiln-hello", installed: "1.0", candidate: "1.1")
        #expect(FreshnessRule.newUpgrades([stale, hello], remaining: [stale]) == [hello])
        #expect(FreshnessRule.newUpgrades([stale], remaining: [stale]).isEmpty)
        #expect(FreshnessRule.newUpgrades([stale], remaining: nil) == [stale], "with no record of a fresh run, every upgrade counts")
        let newer = PackageUpgrade(name: "libc6", installed: "1", candidate: "3")
        #expect(FreshnessRule.newUpgrades([newer], remaining: [stale]) == [newer], "a newer candidate of a known package is news")
    }

    @Test("apt sources: one-line and deb822 files, flat repositories, options and disabled stanzas")
    func aptSources() throws {
        let entries = try PackageSources.parseOneLine(
            """
            # comment
            deb http://deb.debian.org/debian bookworm main contrib
            deb [trusted=yes arch=amd64] http://127.0.0.1:8000/ ./
            deb-src http://deb.debian.org/debian bookworm main
            """, file: "sources.list")
        #expect(
            entries == [
                .init(uri: "http://deb.debian.org/debian", suite: "bookworm", components: ["main", "contrib"]),
                .init(uri: "http://127.0.0.1:8000/", suite: "./", components: []),
            ])
        let stanzas = try PackageSources.parseDeb822(
            """
            Types: deb
            URIs: http://deb.debian.org/debian
            Suites: bookworm bookworm-updates
            Components: main

            Types: deb
            URIs: http://example.invalid/off
            Suites: x
            Enabled: no
            """, file: "debian.sources")
        #expect(stanzas.map(\.suite) == ["bookworm", "bookworm-updates"])
        #expect(throws: PackageSources.Unreadable.self) { try PackageSources.parseOneLine("deb file:/srv/repo ./", file: "local.list") }
    }

    @Test("A Release file's fingerprint counts only the image's Packages entries, so a new Date alone changes nothing")
    func releaseFingerprint() {
        func release(date: String, mainHash: String) -> Data {
            Data(
                """
                Origin: Debian
                Date: \(date)
                SHA256:
                 \(mainHash) 8786 main/binary-amd64/Packages.xz
                 1111111111111111111111111111111111111111111111111111111111111111 9000 contrib/binary-amd64/Packages.xz
                 2222222222222222222222222222222222222222222222222222222222222222 100 main/binary-arm64/Packages.xz
                """.utf8)
        }
        let entries = ["main/binary-amd64/Packages", "main/binary-all/Packages"]
        let url = "http://deb.debian.org/debian/dists/bookworm/InRelease"
        let a = PackageSources.relevantDigest(
            url: url, body: release(date: "Sat, 01 Jun 2024", mainHash: String(repeating: "a", count: 64)), entries: entries)
        let b = PackageSources.relevantDigest(
            url: url, body: release(date: "Sun, 02 Jun 2024", mainHash: String(repeating: "a", count: 64)), entries: entries)
        let c = PackageSources.relevantDigest(
            url: url, body: release(date: "Sun, 02 Jun 2024", mainHash: String(repeating: "b", count: 64)), entries: entries)
        #expect(a == b)
        #expect(a != c)
        let flat = PackageSources.relevantDigest(url: "http://127.0.0.1/Packages", body: Data("Package: x\n".utf8), entries: [])
        #expect(flat == Digest(sha256Of: Data("Package: x\n".utf8)).description)
    }

    @Test(
        "Image files read across layers: the top layer wins, whiteouts and opaque folders hide, symlinks resolve inside the image and never reach the host",
        .enabled(if: geteuid() == 0, "whiteouts are character devices and opaque folders use trusted xattrs: root only"))
    func imageFiles() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-imagefiles-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (bottom, top) = (root + "/bottom", root + "/top")
        for folder in [
            bottom + "/etc/apt/sources.list.d", top + "/etc/apt/sources.list.d", bottom + "/opt/data", top + "/opt/data", top + "/etc/link",
        ] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        try "deb http://old/ bookworm main\n".write(toFile: bottom + "/etc/apt/sources.list", atomically: true, encoding: .utf8)
        try "deb http://new/ bookworm main\n".write(toFile: top + "/etc/apt/sources.list", atomically: true, encoding: .utf8)
        try "a".write(toFile: bottom + "/etc/apt/sources.list.d/a.list", atomically: true, encoding: .utf8)
        try "b".write(toFile: bottom + "/etc/apt/sources.list.d/b.list", atomically: true, encoding: .utf8)
        try "c".write(toFile: top + "/etc/apt/sources.list.d/c.list", atomically: true, encoding: .utf8)
        #expect(mknod(top + "/etc/apt/sources.list.d/b.list", S_IFCHR, 0) == 0)
        try "old".write(toFile: bottom + "/opt/data/hidden", atomically: true, encoding: .utf8)
        #expect(setxattr(top + "/opt/data", "trusted.overlay.opaque", "y", 1, 0) == 0)
        try FileManager.default.removeItem(atPath: top + "/etc/link")
        // Absolute and climbing links resolve inside the image, as in a chroot; never to the host.
        try FileManager.default.createSymbolicLink(atPath: top + "/etc/link", withDestinationPath: "/../../opt")
        try FileManager.default.createSymbolicLink(atPath: top + "/etc/passwd", withDestinationPath: "../../../etc/apt/sources.list")
        try FileManager.default.createSymbolicLink(atPath: top + "/etc/loop", withDestinationPath: "loop")
        try "shadowed".write(toFile: top + "/opt/data/inside", atomically: true, encoding: .utf8)

        let files = ImageFiles(folders: [top, bottom])
        #expect(try files.text("/etc/apt/sources.list") == "deb http://new/ bookworm main\n")
        #expect(try files.list("/etc/apt/sources.list.d") == ["a.list", "c.list"])
        #expect(try files.read("/etc/apt/sources.list.d/b.list") == nil, "a whiteout deletes")
        #expect(try files.read("/opt/data/hidden") == nil, "an opaque folder hides lower layers")
        #expect(try files.list("/opt/data") == ["inside"], "the opaque folder shows only its own layer")
        #expect(try files.text("/etc/link/data/inside") == "shadowed", "a link to /../../opt is the image's /opt")
        #expect(try files.read("/etc/link/hosts") == nil, "never the host's /opt or /etc")
        #expect(try files.text("/etc/passwd") == "deb http://new/ bookworm main\n", "../../../etc climbs no higher than the image's root")
        #expect(throws: ImageFiles.ReadError.self) { try files.read("/etc/loop") }
        #expect(throws: ImageFiles.ReadError.self) { try files.read("/etc/apt/sources.list", limit: 4) }
    }

    @Test("A step that names a package manager is a package step even when its layer shows nothing (an upgrade with nothing to do)")
    func packageManagerNamed() {
        for text in [
            "apt-get upgrade -y", "set -e; apk upgrade --no-cache", "dnf -y update", "action: UpdateOS",
            "DEBIAN_FRONTEND=noninteractive apt install x", "yum update",
        ] {
            #expect(PackageState.mentionsPackageManager(text), "\(text)")
        }
        for text in ["echo adapt > /etc/x", "cp rpmfile.txt /opt", "useradd app", "sha256sum /opt/apkg"] {
            #expect(!PackageState.mentionsPackageManager(text), "\(text)")
        }
    }

    @Test("No readable package source is not a fingerprint: the package manager must be asked")
    func noSources() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-nosources-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/usr/bin", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/etc/apt", withIntermediateDirectories: true)
        try "#!/bin/sh\n".write(toFile: root + "/usr/bin/apt-get", atomically: true, encoding: .utf8)
        #expect(throws: PackageSources.Unreadable.self) { try PackageSources.read(ImageFiles(folders: [root]), architecture: "amd64") }
        try "deb http://deb.debian.org/debian bookworm main\n".write(
            toFile: root + "/etc/apt/sources.list", atomically: true, encoding: .utf8)
        let read = try PackageSources.read(ImageFiles(folders: [root]), architecture: "amd64")
        let sources = try #require(read)
        #expect(
            sources.indexes == [
                .init(
                    candidates: [
                        "http://deb.debian.org/debian/dists/bookworm/InRelease", "http://deb.debian.org/debian/dists/bookworm/Release",
                    ],
                    releaseEntries: ["main/binary-amd64/Packages", "main/binary-all/Packages"])
            ])
    }

    @Test("A layer that holds package-manager state touched packages; one without it did not")
    func packageState() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-pkgstate-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/plain/etc", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/apt/var/lib/dpkg", withIntermediateDirectories: true)
        try "Package: x\n".write(toFile: root + "/apt/var/lib/dpkg/status", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: root + "/lists/var/lib/apt/lists", withIntermediateDirectories: true)
        #expect(!PackageState.touched(layerFolder: root + "/plain"))
        #expect(PackageState.touched(layerFolder: root + "/apt"))
        #expect(PackageState.touched(layerFolder: root + "/lists"), "refreshed indexes count: later installs would read them")
        // A layer whose var is a symlink to the host's / must not report the host's dpkg status.
        try FileManager.default.createDirectory(atPath: root + "/link", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: root + "/link/var", withDestinationPath: "/var")
        #expect(FileManager.default.fileExists(atPath: "/var/lib/dpkg/status") && !PackageState.touched(layerFolder: root + "/link"))
    }
}
