import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry

/// The package repositories an image's own files name (apt's sources, dnf's .repo files, apk's
/// repositories), and a fingerprint of their index files fetched from the Kiln host. Equal
/// fingerprints mean the repositories publish the same packages as at the last check, so the
/// (slower) question to the package manager in an instance can be skipped.
struct PackageSources: Sendable, Hashable {
    /// One index to fetch, with the index paths inside it that matter for this image (for a
    /// Release file: its Packages entries for the image's components and architecture).
    struct Index: Sendable, Hashable {
        /// Tried in order until one answers (InRelease, then Release, then the Packages file).
        var candidates: [String]
        /// For Release files: which listed index files count ("main/binary-amd64/Packages").
        var releaseEntries: [String]
    }

    var manager: PackageManager
    var indexes: [Index]

    /// Why the sources could not be read from the image's files (a check in an instance is then needed).
    struct Unreadable: Error { var reason: String }

    /// Reads the sources from the image's files. `architecture` is the OCI architecture.
    /// At most this many indexes are fetched for one image; more is no ordinary image.
    static let maximumIndexes = 64

    static func read(_ files: ImageFiles, architecture: String) throws -> PackageSources? {
        guard let manager = PackageManager.detect(in: files) else { return nil }
        let indexes: [Index]
        do {
            switch manager {
            case .apt: indexes = try aptIndexes(files, architecture: architecture)
            case .dnf: indexes = try dnfIndexes(files, architecture: architecture)
            case .apk: indexes = try apkIndexes(files)
            }
        } catch let error as ImageFiles.ReadError {
            throw Unreadable(reason: "\(error)")
        }
        // No readable source would give one constant fingerprint: the package manager may still
        // have sources Kiln does not see (dnf.conf, apk --repository), so it must be asked.
        guard !indexes.isEmpty else {
            throw Unreadable(reason: "the image's files name no package repository Kiln can fetch from the host")
        }
        guard indexes.count <= maximumIndexes else {
            throw Unreadable(
                reason: "the image names \(indexes.count) package indexes; Kiln fetches at most \(maximumIndexes) from the host")
        }
        return PackageSources(manager: manager, indexes: indexes)
    }

    // MARK: apt

    static func debianArchitecture(_ oci: String) -> String {
        ["amd64": "amd64", "arm64": "arm64", "386": "i386", "arm": "armhf", "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64"][
            oci] ?? oci
    }

    /// One `deb` entry: URI, suite and components.
    struct AptEntry: Hashable {
        var uri: String
        var suite: String
        var components: [String]
    }

    static func aptIndexes(_ files: ImageFiles, architecture: String) throws -> [Index] {
        var entries: [AptEntry] = []
        if let text = try files.text("/etc/apt/sources.list") { entries += try parseOneLine(text, file: "/etc/apt/sources.list") }
        for name in try files.list("/etc/apt/sources.list.d").prefix(maximumIndexes) {
            let path = "/etc/apt/sources.list.d/" + name
            if name.hasSuffix(".list"), let text = try files.text(path) { entries += try parseOneLine(text, file: path) }
            if name.hasSuffix(".sources"), let text = try files.text(path) { entries += try parseDeb822(text, file: path) }
        }
        let arch = debianArchitecture(architecture)
        return entries.map { entry in
            let base = entry.uri.hasSuffix("/") ? String(entry.uri.dropLast()) : entry.uri
            if entry.suite.hasSuffix("/") {
                // A flat repository: the suite is a path, and it may have no Release file at all.
                let folder = base + "/" + (entry.suite == "./" ? "" : entry.suite)
                let prefix = folder.hasSuffix("/") ? folder : folder + "/"
                return Index(
                    candidates: ["InRelease", "Release", "Packages.xz", "Packages.gz", "Packages"].map { prefix + $0 },
                    releaseEntries: ["Packages"])
            }
            let folder = "\(base)/dists/\(entry.suite)/"
            let listed = entry.components.flatMap { ["\($0)/binary-\(arch)/Packages", "\($0)/binary-all/Packages"] }
            return Index(candidates: [folder + "InRelease", folder + "Release"], releaseEntries: listed)
        }
    }

    static func parseOneLine(_ text: String, file: String) throws -> [AptEntry] {
        var entries: [AptEntry] = []
        for raw in text.split(separator: "\n") {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard words.first == "deb" else { continue }
            words.removeFirst()
            if words.first?.hasPrefix("[") == true {
                while let word = words.first {
                    words.removeFirst()
                    if word.hasSuffix("]") { break }
                }
            }
            guard words.count >= 2 else { continue }
            try checkScheme(words[0], file: file)
            entries.append(AptEntry(uri: words[0], suite: words[1], components: Array(words.dropFirst(2))))
        }
        return entries
    }

    static func parseDeb822(_ text: String, file: String) throws -> [AptEntry] {
        var entries: [AptEntry] = []
        for stanza in text.components(separatedBy: "\n\n") {
            var fields: [String: String] = [:]
            for line in stanza.split(separator: "\n") where !line.hasPrefix("#") {
                guard let colon = line.firstIndex(of: ":"), !line.hasPrefix(" ") else { continue }
                fields[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            guard fields["types"]?.split(separator: " ").contains("deb") == true, fields["enabled"]?.lowercased() != "no" else { continue }
            let components = (fields["components"] ?? "").split(separator: " ").map(String.init)
            for uri in (fields["uris"] ?? "").split(separator: " ").map(String.init) {
                try checkScheme(uri, file: file)
                for suite in (fields["suites"] ?? "").split(separator: " ").map(String.init) {
                    entries.append(AptEntry(uri: uri, suite: suite, components: components))
                }
            }
        }
        return entries
    }

    /// Only http and https indexes can be fetched from the host; anything else (file:, cdrom:,
    /// mirror+) needs the package manager itself.
    static func checkScheme(_ uri: String, file: String) throws {
        guard uri.hasPrefix("http://") || uri.hasPrefix("https://") else {
            throw Unreadable(reason: "\(file) names \(uri), which the host cannot fetch")
        }
    }

    // MARK: dnf

    static func dnfIndexes(_ files: ImageFiles, architecture: String) throws -> [Index] {
        let basearch = ["amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"][architecture] ?? architecture
        let release = files.osRelease()["VERSION_ID"] ?? ""
        var indexes: [Index] = []
        for name in try files.list("/etc/yum.repos.d").prefix(maximumIndexes) where name.hasSuffix(".repo") {
            let path = "/etc/yum.repos.d/" + name
            guard let text = try files.text(path) else { continue }
            var section: [String: String] = [:]
            func finish() throws {
                defer { section = [:] }
                guard !section.isEmpty, section["enabled"].map({ $0 != "0" }) ?? true else { return }
                guard let baseurl = section["baseurl"]?.split(separator: " ").first.map(String.init) else {
                    throw Unreadable(reason: "\(path) uses a metalink or mirrorlist, which only dnf can follow")
                }
                guard !(release.isEmpty && baseurl.contains("$releasever")) else {
                    throw Unreadable(reason: "\(path) uses $releasever and the image's os-release has no VERSION_ID")
                }
                let url = baseurl.replacingOccurrences(of: "$basearch", with: basearch).replacingOccurrences(
                    of: "$releasever", with: release)
                guard !url.contains("$") else { throw Unreadable(reason: "\(path) has a variable Kiln cannot fill in: \(baseurl)") }
                try checkScheme(url, file: path)
                indexes.append(Index(candidates: [(url.hasSuffix("/") ? url : url + "/") + "repodata/repomd.xml"], releaseEntries: []))
            }
            for line in text.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                if line.hasPrefix("[") {
                    try finish()
                    section["name"] = line
                } else if let equals = line.firstIndex(of: "="), !line.hasPrefix("#") {
                    section[line[..<equals].trimmingCharacters(in: .whitespaces)] = line[line.index(after: equals)...].trimmingCharacters(
                        in: .whitespaces)
                }
            }
            try finish()
        }
        return indexes
    }

    // MARK: apk

    static func apkIndexes(_ files: ImageFiles) throws -> [Index] {
        let arch = (try files.text("/etc/apk/arch"))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        guard !arch.isEmpty else { throw Unreadable(reason: "/etc/apk/arch is missing") }
        var indexes: [Index] = []
        for raw in (try files.text("/etc/apk/repositories") ?? "").split(separator: "\n") {
            var line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            if line.hasPrefix("@"), let space = line.firstIndex(of: " ") { line = line[space...].trimmingCharacters(in: .whitespaces) }
            try checkScheme(line, file: "/etc/apk/repositories")
            indexes.append(Index(candidates: ["\(line)/\(arch)/APKINDEX.tar.gz"], releaseEntries: []))
        }
        return indexes
    }

    // MARK: Fingerprint

    /// A digest over every index as the host fetches it now; for Release files, only the lines
    /// that name this image's Packages files count, so a new Date line alone changes nothing.
    /// Throws `Unreadable` when an index cannot be fetched.
    func fingerprint(caCertificates: [String: String] = [:]) async throws -> (Digest, [String]) {
        // The indexes are fetched at once: a warm build waits for the slowest, not the sum.
        let answers = try await withThrowingTaskGroup(of: (String, String).self) { group in
            var answers: [(String, String)] = []
            var pending = indexes[...]
            // At most 8 at a time, each at most 32 MiB.
            for _ in 0..<8 {
                guard let index = pending.popFirst() else { break }
                group.addTask { try await Self.fetch(index, caCertificates: caCertificates) }
            }
            while let answer = try await group.next() {
                answers.append(answer)
                if let index = pending.popFirst() { group.addTask { try await Self.fetch(index, caCertificates: caCertificates) } }
            }
            return answers
        }
        let lines = answers.map { "\($0.0) \($0.1)" }.sorted()
        return (Digest(sha256Of: Data(lines.joined(separator: "\n").utf8)), answers.map(\.0).sorted())
    }

    /// The first candidate of `index` that answers: its URL and relevant digest.
    static func fetch(_ index: Index, caCertificates: [String: String]) async throws -> (String, String) {
        var problems: [String] = []
        for url in index.candidates {
            do {
                let body = try await HTTPSDownload.fetch(
                    hostSideURL(url), caCertificates: caCertificates, limit: 32 << 20, timeout: .seconds(20), allowPlainHTTP: true)
                return (url, relevantDigest(url: url, body: body, entries: index.releaseEntries))
            } catch let error as KilnError {
                problems.append(error.message)
            }
        }
        throw Unreadable(reason: problems.last ?? "no index answered")
    }

    /// Instances reach the host's services as host.kiln.internal; from the host itself that is
    /// the loopback address.
    static func hostSideURL(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.host == "host.kiln.internal" else { return url }
        components.host = "127.0.0.1"
        return components.string ?? url
    }

    /// For a Release or InRelease file, the SHA256 lines of the listed index files; otherwise
    /// the digest of the whole body.
    static func relevantDigest(url: String, body: Data, entries: [String]) -> String {
        let name = (url as NSString).lastPathComponent
        guard name == "InRelease" || name == "Release" else { return Digest(sha256Of: body).description }
        let text = String(decoding: body, as: UTF8.self)
        var inSHA256 = false
        var kept: [String] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.hasPrefix(" ") {
                inSHA256 = line.hasPrefix("SHA256:")
                continue
            }
            guard inSHA256 else { continue }
            let words = line.split(separator: " ")
            guard words.count == 3 else { continue }
            let path = String(words[2])
            if entries.contains(where: { path == $0 || path.hasPrefix($0 + ".") }) { kept.append(String(line)) }
        }
        return kept.isEmpty
            ? Digest(sha256Of: body).description : Digest(sha256Of: Data(kept.sorted().joined(separator: "\n").utf8)).description
    }
}
