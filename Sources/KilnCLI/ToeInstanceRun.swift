import ArgumentParser
import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry
import KilnSystem
import KilnTOE
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `kiln toe run --image`: the documents run in a throwaway container instead of on this host.
struct ToeInstanceOptions: ParsableArguments {
    @Option(
        name: .long,
        help: "Run in a fresh container from this image: a registry reference, oci-layout:…, kiln:NAME, scratch or bootstrap:debian:SUITE.")
    var image: String?

    @Option(name: .long, help: "The instance type that sets CPU and memory limits (t3.micro … c5.large).")
    var instanceType = "t3.medium"

    @Option(
        name: .long,
        help:
            "isolated (own network namespace with NAT; the host is host.kiln.internal), host (the host's network, loopback included: trusted documents only) or none."
    )
    var network = "isolated"

    @Flag(name: .long, help: "Keep the instance when the run fails, for kiln instance shell.")
    var keepOnFailure = false

    @Option(name: .long, help: "Save the instance's changes as a new image with this name in Kiln's store.")
    var snapshot: String?

    @Option(name: .long, help: "Kiln's data directory (default: kiln.yaml's dataDirectory, $KILN_DATA_DIR, or /var/lib/kiln).")
    var dataDir: String?
}

struct ToeInstanceRun {
    let options: ToeInstanceOptions
    let image: String
    let terminal: TerminalOutput

    func run(_ request: TOERunRequest, log: TOELogWriter) async throws -> TOERunOutcome {
        let prepared: (ContainerInstance, InstanceHost)
        do {
            prepared = try await start()
        } catch let error as KilnError {
            terminal.error(error)
            throw ExitCode(ToeExitCode.failed)
        }
        let (instance, host) = prepared
        let interrupts = InterruptCleanup { await instance.destroy() }
        defer { interrupts.cancel() }
        terminal.progress("running in \(instance.session.displayName) from \(image)")
        let outcome = await TOERunner(session: instance.session, options: TOEOptions()).run(request, log: log, resume: nil)
        // The run ends early when an interrupt removes the instance; the handler's exit code wins.
        await interrupts.waitIfInterrupted()
        if outcome.succeeded, let snapshot = options.snapshot {
            do {
                let saved = try instance.snapshot(
                    as: snapshot,
                    settings: .init(history: "kiln toe run " + request.documents.map(\.document.source).joined(separator: ",")))
                terminal.progress("saved the instance's changes as kiln:\(snapshot) (\(saved.digest))")
            } catch let error as KilnError {
                terminal.error(error)
            }
        }
        if !outcome.succeeded, options.keepOnFailure {
            try? instance.keep()
            terminal.progress(
                "kept \(instance.id) for debugging: kiln instance shell \(instance.id); remove it with kiln instance rm \(instance.id)")
        } else {
            await instance.destroy()
        }
        _ = host
        return outcome
    }

    private func start() async throws -> (ContainerInstance, InstanceHost) {
        let environment = try KilnEnvironment(KilnOptions(dataDir: options.dataDir))
        let host = try await environment.instanceHost()
        let view = TransferProgressView()
        let transfer = ImageTransfer(store: environment.store, registries: environment.registries, observer: view.observer)
        let terminal = self.terminal
        let instance = try await ContainerInstance.launch(
            image: image, instanceType: options.instanceType, network: options.network, configuration: environment.configuration,
            transfer: transfer, on: host,
            progress: { terminal.progress($0) }
        )
        view.finish()
        return (instance, host)
    }
}

/// Ctrl-C or SIGTERM while an instance runs removes it before Kiln exits (128 + the signal).
final class InterruptCleanup: Sendable {
    private let signals: InterruptSignals

    init(_ cleanup: @escaping @Sendable () async -> Void) {
        signals = InterruptSignals { number, _ in
            FileHandle.standardError.write(Data("kiln: interrupted; removing the instance\n".utf8))
            Task {
                await cleanup()
                exit(128 + number)
            }
        }
    }

    /// Suspends for good once an interrupt arrived: its handler removes the instance and exits.
    func waitIfInterrupted() async {
        while signals.interrupted {
            try? await Task.sleep(for: .seconds(60))
        }
    }

    func cancel() { signals.stop() }
}
