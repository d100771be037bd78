import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE

/// Kiln's suites on a machine image's test VM, over SSH: functionality (the boot reached
/// multi-user.target, SSH answered in time, `functionality.command` exits 0), health (a command
/// in the VM, or an HTTP check from the host through a forwarded port), and security (the same
/// checks as for containers, on the VM's own filesystem; secrets and pending updates on the
/// built root filesystem's layers, which the disk was made from).
extension ImageTestSuites {
    func runMachine(
        image: Descriptor, machine: VirtualMachine, session: VirtualMachineSession, bootLimit: Duration
    ) async -> ([TestCaseResult], [ContainerInstance.Usage]) {
        var results: [TestCaseResult] = []
        func record(_ suite: String, _ name: String, _ body: () async throws -> (TestCaseResult.Status, String)) async {
            results.append(await check(suite, name, body))
        }
        let updatesStart = ContinuousClock.now
        async let updates = settings.security?.pendingUpdates != false ? pendingUpdates(image: image) : nil
        if settings.functionality?.enabled != false {
            await record("functionality", "SSH answered in time") {
                let limit = bootLimit.components.seconds
                let took = String(format: "%.1f", machine.bootSeconds)
                return (.passed, "SSH answered \(took) s after QEMU started (\(machine.accelerator.rawValue)), within \(limit) s")
            }
            await record("functionality", "reached multi-user.target") { try await reachedMultiUser(session) }
            if let command = settings.functionality?.command, let executable = command.first {
                await record("functionality", "command exits 0") {
                    let output = LineEcho(prefix: "TEST: functionality: ", progress: progress)
                    let seconds = settings.functionality?.runForSeconds ?? 60
                    let result = try await session.exec(
                        ExecRequest(executable: executable, arguments: Array(command.dropFirst()), timeout: .seconds(seconds))
                    ) { _, bytes in output.append(bytes) }
                    output.flush()
                    let shown = command.joined(separator: " ")
                    if result.exitCode == 0 { return (.passed, "\(shown) exited 0") }
                    return (.failed, "\(shown) exited with \(result.exitCode)\(result.timedOut ? " (timed out)" : ""): \(output.tail)")
                }
            }
        }
        if let health = settings.health, health.command != nil || health.httpPort != nil {
            let name = health.httpPort.map { "http guest port \($0)\(health.httpPath ?? "/")" } ?? "command"
            await record("health", name) { try await machineHealth(health, machine: machine, session: session) }
        }
        let security = settings.security
        if security?.worldWritable != false {
            await record("security", "no world-writable files") { worldWritable(try await guestWorldWritable(session)) }
        }
        if security?.setuid != false {
            await record("security", "no new SUID/SGID files") {
                let (manifest, config) = try host.store.image(image.digest)
                return try setuidGrowth(try await guestSetuid(session), manifest: manifest, config: config)
            }
        }
        if security?.secrets != false {
            await record("security", "no private keys or credentials in layers") {
                let (manifest, _) = try host.store.image(image.digest)
                let added = Array(manifest.layers.dropFirst(parentLayerCount))
                return secrets(try secretsInAddedLayers(added), layers: added.count)
            }
        }
        var usages: [ContainerInstance.Usage] = []
        if let answer = await updates {
            results.append(pendingUpdatesResult(answer, since: updatesStart))
            if let usage = answer.2 { usages.append(usage) }
        }
        return (results, usages)
    }

    /// systemd's multi-user.target is active; the boot may still be finishing when SSH answers,
    /// so `systemctl is-system-running --wait` is asked first (bounded).
    private func reachedMultiUser(_ session: VirtualMachineSession) async throws -> (TestCaseResult.Status, String) {
        let state = try await guestOutput(session, "timeout 120 systemctl is-system-running --wait; true")
        let target = try await guestOutput(session, "systemctl is-active multi-user.target; true")
        let failed = try await guestOutput(session, "systemctl list-units --failed --no-legend --plain | cut -d' ' -f1; true")
            .split(separator: "\n").map(String.init)
        guard target == "active" else {
            return (
                .failed,
                "multi-user.target is \(target) (system \(state))\(failed.isEmpty ? "" : "; failed units: " + failed.joined(separator: ", "))"
            )
        }
        return (
            .passed, "multi-user.target active, system \(state)\(failed.isEmpty ? "" : "; failed units: " + failed.joined(separator: ", "))"
        )
    }

    private func guestOutput(_ session: VirtualMachineSession, _ command: String) async throws -> String {
        let output = OutputCollector()
        _ = try await session.exec(ExecRequest(executable: "/bin/sh", arguments: ["-c", command], timeout: .seconds(150))) {
            stream, bytes in
            if stream == .stdout { output.append(bytes) }
        }
        return output.text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The check retried until it passes or `startupSeconds` (default 60 for a VM) pass.
    private func machineHealth(_ health: KilnTests.Health, machine: VirtualMachine, session: VirtualMachineSession) async throws -> (
        TestCaseResult.Status, String
    ) {
        let startup = health.startupSeconds ?? 60
        let deadline = ContinuousClock.now + .seconds(startup)
        var last = "no answer yet"
        repeat {
            if let check = health.command, let executable = check.first {
                let output = LineEcho(prefix: "", progress: { _ in })
                let result = try await session.exec(
                    ExecRequest(executable: executable, arguments: Array(check.dropFirst()), timeout: .seconds(10))
                ) { _, bytes in output.append(bytes) }
                output.flush()
                if result.exitCode == 0 { return (.passed, "\(check.joined(separator: " ")) exited 0 in the VM") }
                last = "\(check.joined(separator: " ")) exited with \(result.exitCode): \(output.tail)"
            } else if let port = health.httpPort, let forwarded = machine.forwardedPort {
                let path = health.httpPath ?? "/"
                let expected = health.expectStatus ?? 200
                let url = "http://127.0.0.1:\(forwarded)\(path.hasPrefix("/") ? path : "/" + path)"
                let status = await HTTPProbe.status(of: url)
                if status == expected {
                    return (.passed, "GET \(path) on guest port \(port) (host 127.0.0.1:\(forwarded)) answered \(status ?? 0)")
                }
                last = status.map { "GET \(path) answered \($0), expected \(expected)" } ?? "GET \(path) on guest port \(port): no answer"
            }
            try await Task.sleep(for: .seconds(1))
        } while ContinuousClock.now < deadline
        return (.failed, "not healthy within \(startup) s: \(last)")
    }

    /// World-writable files and non-sticky folders on the VM's root filesystem, outside tmp folders.
    private func guestWorldWritable(_ session: VirtualMachineSession) async throws -> [String] {
        let pruned = Self.temporaryFolders.map { "-path /\($0)" }.joined(separator: " -o ")
        let text = try await guestOutput(
            session,
            "find / -xdev \\( \(pruned) \\) -prune -o \\( -type f -perm -0002 -print \\) -o \\( -type d -perm -0002 ! -perm -1000 -print \\) 2>/dev/null; true"
        )
        return text.split(separator: "\n").map(String.init).sorted()
    }

    /// SUID/SGID files on the VM's root filesystem, relative to / as the container suite keeps them.
    private func guestSetuid(_ session: VirtualMachineSession) async throws -> [String] {
        let text = try await guestOutput(session, "find / -xdev -type f -perm /6000 2>/dev/null; true")
        return text.split(separator: "\n").map { String($0.dropFirst()) }.sorted()
    }
}

/// One HTTP GET from the host, by curl: the status code, or nil when nothing answered.
enum HTTPProbe {
    static func status(of url: String) async -> Int? {
        let output = OutputCollector()
        guard
            let result = try? await ProcessRunner.run(
                executablePath: "/usr/bin/curl", argumentZero: "curl",
                arguments: ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--noproxy", "*", url],
                environment: [:], workingDirectory: nil, timeout: .seconds(10),
                output: { stream, bytes in
                    if stream == .stdout { output.append(bytes) }
                }),
            result.exitCode == 0, let code = Int(output.text), code > 0
        else { return nil }
        return code
    }
}
