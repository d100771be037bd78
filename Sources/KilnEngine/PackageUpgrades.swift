import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE

/// Which package manager an image has, and how to ask it for upgrades.
enum PackageManager: String, Sendable {
    case apt, dnf, apk

    /// The first of apt, dnf and apk whose program is in `root` (an image's merged files).
    static func detect(in files: ImageFiles) -> PackageManager? {
        if files.isRegularFile("/usr/bin/apt-get") { return .apt }
        if files.isRegularFile("/usr/bin/dnf") || files.isRegularFile("/usr/bin/dnf5") { return .dnf }
        if files.isRegularFile("/sbin/apk") { return .apk }
        return nil
    }

    /// A script that refreshes the indexes (exit 3 when a source cannot be reached: an
    /// uncached build could not have used it either), then prints every upgrade as
    /// `KILN-UPGRADE …` lines. apt simulates dist-upgrade, so new dependencies and held-back
    /// packages count too. apt-get update exits 0 on a failed fetch unless told otherwise, and
    /// older apt only warns, so its warnings count as failures as well.
    var script: String {
        switch self {
        case .apt:
            return """
                apt-get update -qq -o APT::Update::Error-Mode=any >/dev/null 2>/tmp/kiln-update.err; status=$?
                if [ $status != 0 ] || grep -Eq '^(W: (Failed to fetch|Some index files failed)|E: )' /tmp/kiln-update.err; then cat /tmp/kiln-update.err >&2; exit 3; fi
                apt-get -s -o Debug::NoLocking=1 dist-upgrade >/tmp/kiln-upgrade.out 2>&1 || { cat /tmp/kiln-upgrade.out >&2; exit 4; }
                sed -n 's/^Inst /KILN-UPGRADE /p' /tmp/kiln-upgrade.out
                """
        case .dnf:
            // --refresh: never answer from metadata cached in the image. dnf wraps a long name
            // onto its own line; the awk joins it with the next.
            return """
                dnf -q --refresh check-update >/tmp/kiln-upgrade.out 2>/tmp/kiln-update.err; status=$?
                [ $status = 0 ] || [ $status = 100 ] || { cat /tmp/kiln-update.err >&2; exit 3; }
                awk 'NF==1 && $1 ~ /\\./ {held=$1; next} held != "" {$0 = held " " $0; held=""} NF==3 && $1 ~ /\\./ {print $1, $2, $3}' /tmp/kiln-upgrade.out |
                while read -r name candidate repo; do
                  installed=$(rpm -q --qf '%{VERSION}-%{RELEASE}\\n' "${name%.*}" 2>/dev/null | tail -1)
                  echo "KILN-UPGRADE ${name%.*} ${installed:--} $candidate $repo"
                done
                """
        case .apk:
            return """
                apk update -q >/dev/null 2>/tmp/kiln-update.err || { cat /tmp/kiln-update.err >&2; exit 3; }
                apk version -l '<' >/tmp/kiln-upgrade.out 2>&1 || { cat /tmp/kiln-upgrade.out >&2; exit 4; }
                sed 1d /tmp/kiln-upgrade.out | awk '{print "KILN-UPGRADE", $1, $3}'
                """
        }
    }

    /// The upgrades in the script's output lines.
    func parse(_ lines: [String]) -> [PackageUpgrade] {
        var upgrades: [PackageUpgrade] = []
        for line in lines where line.hasPrefix("KILN-UPGRADE ") {
            let words = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().map(String.init)
            switch self {
            case .apt:
                if let upgrade = Self.parseAptInst(words) { upgrades.append(upgrade) }
            case .dnf:
                guard words.count >= 3 else { continue }
                let origin = words.count > 3 ? words[3...].joined(separator: " ") : nil
                upgrades.append(
                    PackageUpgrade(name: words[0], installed: words[1] == "-" ? "" : words[1], candidate: words[2], origin: origin))
            case .apk:
                // `name-1.2.3-r0 < 1.2.4-r0`: the version is the last two dash-separated parts.
                guard words.count >= 2 else { continue }
                let parts = words[0].split(separator: "-", omittingEmptySubsequences: false)
                guard parts.count >= 3 else { continue }
                let name = parts.dropLast(2).joined(separator: "-")
                let installed = parts.suffix(2).joined(separator: "-")
                upgrades.append(PackageUpgrade(name: name, installed: installed, candidate: words[1]))
            }
        }
        return upgrades.sorted()
    }

    /// apt-get -s: `name [installed] (candidate origin [arch])`; a new dependency has no `[installed]`.
    static func parseAptInst(_ words: [String]) -> PackageUpgrade? {
        guard let name = words.first else { return nil }
        var rest = words.dropFirst()
        var installed = ""
        if let first = rest.first, first.hasPrefix("["), first.hasSuffix("]") {
            installed = String(first.dropFirst().dropLast())
            rest = rest.dropFirst()
        }
        guard let open = rest.first, open.hasPrefix("(") else { return nil }
        let candidate = String(open.dropFirst())
        guard !candidate.isEmpty else { return nil }
        var originWords: [String] = []
        for word in rest.dropFirst() {
            if word.hasPrefix("[") { break }
            originWords.append(word.hasSuffix(")") ? String(word.dropLast()) : word)
            if word.hasSuffix(")") { break }
        }
        let origin = originWords.joined(separator: " ")
        return PackageUpgrade(name: name, installed: installed, candidate: candidate, origin: origin.isEmpty ? nil : origin)
    }
}

/// Asks an image's own package sources what they would upgrade, in a throwaway instance with
/// the network (the indexes must be fetched fresh). The security suite and the build cache's
/// freshness check both use it.
struct PackageUpgradeQuery: Sendable {
    enum Answer: Sendable {
        case upgrades([PackageUpgrade], PackageManager)
        /// No apt, dnf or apk (or no shell to run them): nothing can be asked.
        case noPackageManager(String)
        /// The sources could not be reached or the package manager failed.
        case unreachable(String)
    }

    let host: InstanceHost
    let type: InstanceType
    var network: InstanceNetwork = .isolated

    func ask(_ image: Descriptor) async -> (Answer, ContainerInstance.Usage?) {
        let files: ImageFiles
        do {
            files = try ImageFiles(image: image, host: host)
        } catch {
            return (.unreachable("cannot read the image's files: \((error as? KilnError)?.message ?? "\(error)")"), nil)
        }
        guard let manager = PackageManager.detect(in: files) else { return (.noPackageManager("no apt, dnf or apk in the image"), nil) }
        guard files.isRegularFile("/bin/sh") || files.isRegularFile("/usr/bin/sh") else {
            return (.noPackageManager("the image has no /bin/sh to ask its package manager"), nil)
        }
        let instance: ContainerInstance
        do {
            instance = try await ContainerInstance.start(image: image, on: host, options: InstanceOptions(type: type, network: network))
        } catch {
            return (
                .unreachable("cannot start an instance to ask \(manager.rawValue): \((error as? KilnError)?.message ?? "\(error)")"), nil
            )
        }
        let output = LineEcho(prefix: "", progress: { _ in }, keep: 10_000)
        let result: ExecResult
        do {
            result = try await instance.session.exec(
                ExecRequest(executable: "/bin/sh", arguments: ["-c", manager.script], timeout: .seconds(300), user: "0")
            ) { _, bytes in
                output.append(bytes)
            }
            output.flush()
        } catch {
            let usage = instance.usage()
            await instance.destroy()
            return (.unreachable("\(manager.rawValue) could not be asked: \((error as? KilnError)?.message ?? "\(error)")"), usage)
        }
        let usage = instance.usage()
        await instance.destroy()
        guard result.exitCode == 0 else {
            let what = result.exitCode == 3 ? "could not refresh its package indexes" : "failed (exit \(result.exitCode))"
            return (.unreachable("\(manager.rawValue) \(what): \(output.tail)"), usage)
        }
        return (.upgrades(manager.parse(output.lines), manager), usage)
    }
}
