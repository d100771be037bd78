import Foundation
import KilnModel

/// `ExecuteBash`: the commands become one script run by bash; its exit code is the step's result.
struct ExecuteBashAction: TOEAction {
    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: "ExecuteBash", stepPath: context.stepPath)
        let commands = reader.list("commands")
        guard !commands.isEmpty else { throw context.failure("ExecuteBash needs at least one command", code: .invalidArgument) }
        let folder = try context.scratchDirectory.get()
        let script = folder + "/input.sh"
        try await context.session.createDirectory(folder, mode: 0o700)
        try await context.session.writeFile(
            script, contents: Data(commands.joined(separator: "\n").utf8 + [10]), append: false, mode: 0o700)
        let exec = StreamingExec(context: context)
        let (result, stdout) = try await exec.run(ExecRequest(executable: "bash", arguments: [script], workingDirectory: folder))
        try? await context.session.remove(folder, recursive: true)
        return try exec.finish(result, stdout: stdout, what: "the script")
    }
}

/// `ExecuteBinary`: one program with arguments, no shell.
struct ExecuteBinaryAction: TOEAction {
    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: "ExecuteBinary", stepPath: context.stepPath)
        let path = try reader.required("path")
        let exec = StreamingExec(context: context)
        let (result, stdout) = try await exec.run(ExecRequest(executable: path, arguments: reader.list("arguments")))
        return try exec.finish(result, stdout: stdout, what: "'\(path)'")
    }
}

/// `Reboot`: waits `delaySeconds`, then asks the instance to restart. The step is done once it has.
struct RebootAction: TOEAction {
    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: "Reboot", stepPath: context.stepPath)
        let delay = try reader.int("delaySeconds", default: 0)
        guard delay >= 0 else { throw context.failure("Reboot delaySeconds must be 0 or more, got \(delay)", code: .invalidArgument) }
        if delay > 0 {
            context.log.info("Rebooting in \(delay) seconds")
            try await Task.sleep(for: .seconds(delay))
        }
        return .rebootRequested(outputs: [:], rerunStep: false)
    }
}

/// `UpdateOS`: installs updates with the instance's package manager.
struct UpdateOSAction: TOEAction {
    enum PackageManager: String, CaseIterable, Sendable {
        case aptGet = "apt-get", dnf, yum, zypper, apk
    }

    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: "UpdateOS", stepPath: context.stepPath)
        let include = reader.list("include")
        let exclude = reader.list("exclude")
        guard let manager = try await detect(context) else {
            throw context.failure(
                "UpdateOS found no package manager (apt-get, dnf, yum, zypper or apk) in the \(context.session.displayName)")
        }
        context.log.info("UpdateOS: using \(manager.rawValue)")
        let script = try Self.script(for: manager, include: include, exclude: exclude)
        let exec = StreamingExec(context: context)
        let (result, stdout) = try await exec.run(
            ExecRequest(
                executable: "/bin/sh", arguments: ["-c", script],
                environment: ["DEBIAN_FRONTEND": "noninteractive"]
            ))
        return try exec.finish(result, stdout: stdout, what: "\(manager.rawValue) update")
    }

    func detect(_ context: ActionContext) async throws -> PackageManager? {
        for manager in PackageManager.allCases {
            let probe = ExecRequest(
                executable: "/bin/sh", arguments: ["-c", "command -v \"$1\" >/dev/null 2>&1", "sh", manager.rawValue], timeout: .seconds(30)
            )
            if try await context.session.exec(probe, output: { _, _ in }).exitCode == 0 { return manager }
        }
        return nil
    }

    /// The shell script for one manager. Package names are quoted; they never reach a shell unquoted.
    static func script(for manager: PackageManager, include: [String], exclude: [String]) throws -> String {
        let included = include.map(shellQuote).joined(separator: " ")
        let excluded = exclude.map(shellQuote).joined(separator: " ")
        var lines = ["set -e"]
        switch manager {
        case .aptGet:
            lines.append("apt-get update")
            if !exclude.isEmpty {
                lines.append("apt-mark hold \(excluded)")
                lines.append("trap 'apt-mark unhold \(excluded) >/dev/null' EXIT")
            }
            if include.isEmpty {
                lines.append("apt-get -y -o Dpkg::Options::=--force-confold upgrade")
            } else {
                lines.append("apt-get -y -o Dpkg::Options::=--force-confold install --only-upgrade \(included)")
            }
        case .dnf, .yum:
            let excludes = exclude.map { "--exclude=" + shellQuote($0) }.joined(separator: " ")
            lines.append("\(manager.rawValue) -y upgrade \(excludes) \(included)")
        case .zypper:
            if !exclude.isEmpty {
                lines.append("zypper --non-interactive addlock \(excluded)")
                lines.append("trap 'zypper --non-interactive removelock \(excluded) >/dev/null' EXIT")
            }
            lines.append("zypper --non-interactive update \(included)")
        case .apk:
            guard exclude.isEmpty else {
                throw KilnError(
                    .invalidArgument, "UpdateOS on apk cannot exclude packages; list the packages to update with include instead")
            }
            lines.append("apk update")
            lines.append("apk upgrade \(included)")
        }
        return lines.joined(separator: "\n")
    }

    static func shellQuote(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
