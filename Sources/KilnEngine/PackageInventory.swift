import Foundation
import KilnInstances
import KilnModel

/// The packages installed in an image, from the package manager's own database files:
/// dpkg's `/var/lib/dpkg/status` or apk's `/lib/apk/db/installed`. rpm keeps a binary
/// database Kiln does not read yet, so an rpm image lists none.
enum PackageInventory {
    static func read(_ files: ImageFiles) throws -> [InstalledPackage] {
        if let status = try files.text("/var/lib/dpkg/status", limit: 64 << 20) { return dpkg(status) }
        if let installed = try files.text("/lib/apk/db/installed", limit: 64 << 20) { return apk(installed) }
        return []
    }

    /// Stanzas whose Status is `install ok installed`, by name.
    static func dpkg(_ text: String) -> [InstalledPackage] {
        stanzas(text).compactMap { fields in
            guard fields["Status"]?.hasSuffix(" installed") == true, let name = fields["Package"], let version = fields["Version"] else {
                return nil
            }
            return InstalledPackage(name: name, version: version)
        }.sorted { $0.name < $1.name }
    }

    /// apk's `P:` (name) and `V:` (version) lines, one package per blank-line-separated block.
    static func apk(_ text: String) -> [InstalledPackage] {
        text.components(separatedBy: "\n\n").compactMap { block in
            var name: String?
            var version: String?
            for line in block.split(separator: "\n") {
                if line.hasPrefix("P:") { name = String(line.dropFirst(2)) }
                if line.hasPrefix("V:") { version = String(line.dropFirst(2)) }
            }
            guard let name, let version else { return nil }
            return InstalledPackage(name: name, version: version)
        }.sorted { $0.name < $1.name }
    }

    /// RFC 822-style stanzas: `Key: value` lines, continuation lines start with a space.
    static func stanzas(_ text: String) -> [[String: String]] {
        var result: [[String: String]] = []
        var current: [String: String] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty {
                if !current.isEmpty { result.append(current) }
                current = [:]
            } else if !line.hasPrefix(" "), !line.hasPrefix("\t"), let colon = line.firstIndex(of: ":") {
                current[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        if !current.isEmpty { result.append(current) }
        return result
    }
}
