import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A data directory shared by the instance tests of one machine, so the Debian parent is
/// bootstrapped with mmdebstrap once (about a minute) and reused.
let sharedDataDirectory = "/var/tmp/kiln-cli-instances"

@Suite(
    "kiln toe run --image and kiln instance, on runc with a bootstrapped Debian", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct InstanceCommandTests {
    let data = ["--data-dir", sharedDataDirectory]

    func document(_ scratch: Scratch, _ name: String, _ commands: [String]) throws -> String {
        try scratch.write(
            name + ".yaml",
            """
            name: \(name)
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Run
                    action: ExecuteBash
                    inputs:
                      commands:
            \(commands.map { "            - \"\($0)\"" }.joined(separator: "\n"))
            """)
    }

    @Test(
        "Bootstrap Debian, install a package and change files in a builder, snapshot, and see every change in a fresh instance without network"
    )
    func buildAndTest() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let build = try document(
            scratch, "Build",
            [
                "apt-get update -qq",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null",
                "echo built > /etc/kiln-built",
                "rm /etc/issue.net",
            ])
        let built = try Kiln.run(
            ["toe", "run", "--image", "bootstrap:debian:bookworm", "-d", build, "--snapshot", "cli-test:jq", "-l", scratch.path] + data)
        #expect(built.status == 0, "\(built.stderr)")
        #expect(built.stderr.contains("saved the instance's changes as kiln:cli-test:jq"))

        let check = try document(
            scratch, "Check",
            [
                "jq --version", "cat /etc/kiln-built", "test ! -e /etc/issue.net && echo issue.net-gone",
                "cat /etc/os-release | grep -c bookworm", "id -u",
            ])
        let tested = try Kiln.run(
            ["toe", "run", "--image", "kiln:cli-test:jq", "--network", "none", "-d", check, "-l", scratch.path] + data)
        #expect(tested.status == 0, "\(tested.stderr)")
        for line in ["Stdout: jq-1.6", "Stdout: built", "Stdout: issue.net-gone", "Stdout: 0"] {
            #expect(tested.stderr.contains(line), "\(line) in \(tested.stderr)")
        }
        #expect(try Kiln.shell("mount | grep -c \(sharedDataDirectory)/instances") == "0\n", "no instance mount is left")
    }

    @Test("A failed run can keep its instance; kiln instance ls shows it and rm removes it")
    func keepOnFailure() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let failing = try document(scratch, "Fails", ["echo about to fail", "exit 3"])
        let failed = try Kiln.run(
            ["toe", "run", "--image", "bootstrap:debian:bookworm", "-d", failing, "--keep-on-failure", "-l", scratch.path] + data)
        #expect(failed.status == 1)
        let id = try #require(
            failed.stderr.range(of: #"kept (kiln-[0-9a-f]{12})"#, options: .regularExpression).map {
                String(failed.stderr[$0].dropFirst(5))
            })
        let listed = try Kiln.run(["instance", "ls"] + data)
        #expect(listed.stdout.contains(id) && listed.stdout.contains("running") && listed.stdout.contains("yes"), "\(listed.stdout)")
        let shell = try Kiln.run(["instance", "shell", id, "--shell", "/bin/hostname"] + data)
        #expect(
            shell.status == 0 && shell.stdout == id + "\n",
            "kiln instance shell runs inside the kept instance: \(shell.stdout) \(shell.stderr)")
        let removed = try Kiln.run(["instance", "rm", id] + data)
        #expect(removed.status == 0 && removed.stdout == "removed \(id)\n")
        #expect(!(try Kiln.run(["instance", "ls"] + data)).stdout.contains(id))
        let unknown = try Kiln.run(["instance", "rm", "kiln-000000000000"] + data)
        #expect(unknown.status == 1 && unknown.stderr.contains("no instance 'kiln-000000000000'"))
    }

    @Test("kill -9 of kiln mid-run: the next start removes the container, its mount and its cgroup")
    func killedMidRun() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        // A duration of its own, so the leftover check below cannot find another's `sleep 300`.
        let nap = "sleep 300.\(Int.random(in: 100_000...999_999))"
        let sleeper = try document(scratch, "Sleeps", [nap])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Kiln.binary)
        process.arguments = ["toe", "run", "--image", "bootstrap:debian:bookworm", "-d", sleeper, "-l", scratch.path] + data
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var id: String?
        for _ in 0..<600 where id == nil {
            usleep(200_000)
            let listed = try Kiln.shell("ls \(sharedDataDirectory)/instances | grep '^kiln-' ; true")
            if let first = listed.split(separator: "\n").first, try Kiln.shell("runc --root /run/kiln/runc list").contains(first) {
                id = String(first)
            }
        }
        let running = try #require(id, "an instance started")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        // The root, Kiln's nodev view of it, and the instance's network namespace.
        #expect(try Kiln.shell("mount | grep -c \(running)") == "3\n", "the crash left the mounts behind")

        let next = try Kiln.run(["instance", "ls"] + data)
        #expect(next.stderr.contains("removed 1 instance(s) left by a Kiln that stopped: \(running)"), "\(next.stderr)")
        #expect(try Kiln.shell("mount | grep -c \(running)") == "0\n")
        #expect(!(try Kiln.shell("runc --root /run/kiln/runc list")).contains(running))
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/kiln/\(running)"))
        #expect(!FileManager.default.fileExists(atPath: "\(sharedDataDirectory)/instances/\(running)"))
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/\(running)"), "the network namespace went with it")
        #expect(
            try Kiln.shell(
                "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sleep ] && cat $p/cmdline | tr '\\0' ' ' && echo; done; true"
            ).contains(nap) == false, "the step's \(nap) died with its instance")
    }

    @Test("Ctrl-C (SIGINT) during a run removes the instance before kiln exits")
    func interrupted() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let sleeper = try document(scratch, "SleepsToo", ["sleep 300"])
        let kiln = try RunningKiln(["toe", "run", "--image", "bootstrap:debian:bookworm", "-d", sleeper, "-l", scratch.path] + data)
        // The run has started once kiln says where it runs.
        let running = try #require(
            kiln.instance(after: "container ", once: "running in container", seconds: 60), "an instance started: \(kiln.stderr.text)")
        usleep(300_000)
        _ = kiln.interrupt()
        let process = kiln.process
        let stderr = kiln.stderr.text
        #expect(process.terminationStatus == 128 + SIGINT, "\(stderr)")
        #expect(stderr.contains("interrupted; removing the instance"))
        #expect(!FileManager.default.fileExists(atPath: "\(sharedDataDirectory)/instances/\(running)"))
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/\(running)"), "the network namespace went with it")
        #expect(try Kiln.shell("mount | grep -c \(running)") == "0\n")
        #expect(!(try Kiln.shell("runc --root /run/kiln/runc list")).contains(running))
    }
}

/// stderr of a running kiln, read as it arrives.
/// A kiln started in the background, its stderr read as it arrives, to be interrupted mid-run.
final class RunningKiln {
    let process = Process()
    let stderr = ErrorText()
    private let output = Pipe(), errors = Pipe()

    init(_ arguments: [String], in directory: String? = nil) throws {
        process.executableURL = URL(fileURLWithPath: Kiln.binary)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.standardOutput = output
        process.standardError = errors
        let collected = stderr
        errors.fileHandleForReading.readabilityHandler = { collected.append($0.availableData) }
        try process.run()
    }

    /// Waits until stderr says `text` (at most `seconds`), then returns the instance id kiln
    /// printed right after `label` (such as "container " or "builder "), if any.
    func instance(after label: String, once text: String, seconds: Int) -> String? {
        for _ in 0..<(seconds * 10) where !stderr.text.contains(text) { usleep(100_000) }
        let text = stderr.text
        return text.range(of: label + #"(kiln-[0-9a-f]{12})"#, options: .regularExpression).map { String(text[$0].dropFirst(label.count)) }
    }

    /// Sends SIGINT, waits for kiln to exit, and returns its stdout.
    func interrupt() -> Data {
        kill(process.processIdentifier, SIGINT)
        let stdout = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        errors.fileHandleForReading.readabilityHandler = nil
        return stdout
    }
}

final class ErrorText: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()

    func append(_ chunk: Data) {
        lock.lock()
        data.append(chunk)
        lock.unlock()
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}
