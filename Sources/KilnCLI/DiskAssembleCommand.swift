import ArgumentParser
import Foundation
import KilnInstances
import KilnModel

/// `kiln disk`: machine-disk steps on their own, for benchmarks and for looking at a disk by hand.
/// Hidden: image builds assemble and boot disks themselves.
struct DiskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "Assemble a machine disk from a root filesystem folder, or boot one as a test instance.",
        shouldDisplay: false,
        subcommands: [DiskAssembleCommand.self, DiskBootCommand.self, DiskAcceleratorCommand.self]
    )
}

/// `kiln disk assemble ROOTFS`: `MachineDisk.assemble`, printing the files and the seconds taken.
struct DiskAssembleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assemble",
        abstract: "Make NAME.raw and NAME.qcow2 (GPT, SYSLINUX boot partition, ext4 root) from a root filesystem folder.",
        discussion: "Prints 'raw PATH', 'qcow2 PATH', 'kernel RELEASE' and 'assembled SECONDS' on stdout; progress goes to stderr."
    )

    @Argument(help: "The root filesystem folder (left as it was; a generalised copy goes into the disk).")
    var rootFilesystem: String

    @Option(name: .long, help: "The disk's size in GiB (blockDeviceMappings volumeSize).")
    var volumeSize = 8

    @Option(name: .long, help: "The folder for the disk files.")
    var output: String

    @Option(name: .long, help: "The disk files' name, without extension.")
    var name = "disk"

    @Flag(name: [.customShort("q"), .long], help: "No progress output.")
    var quiet = false

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let quiet = quiet
            let disk = try await MachineDisk.assemble(
                rootFilesystem: rootFilesystem, volumeSizeGiB: volumeSize, into: output, name: name,
                observer: { if !quiet { TerminalOutput().progress($0) } })
            print("raw \(disk.raw)")
            print("qcow2 \(disk.qcow2)")
            print("kernel \(disk.kernelRelease)")
            print("assembled \(String(format: "%.2f", disk.assemblySeconds))")
        }
    }
}

/// `kiln disk boot DISK.raw`: boots the disk the way a test instance is booted
/// (`VirtualMachine.withBooted`), runs one command over SSH and stops the VM.
struct DiskBootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Boot a disk as a test instance (direct kernel boot, ephemeral SSH key), run a command, stop.",
        discussion: """
            Prints the command's output, then 'accelerator kvm|tcg' and 'ssh-seconds SECONDS' (from QEMU's start to the \
            first SSH command that succeeded). The disk is not written: the VM runs on an overlay.
            """
    )

    @Argument(help: "The disk's .raw file (NAME.qcow2 next to it is used when present).")
    var disk: String

    @Option(name: .long, help: "The instance type whose vCPUs and memory the VM gets.")
    var instanceType = "t3.micro"

    @Option(name: .long, help: "Seconds the guest may take to answer SSH.")
    var timeout = 300

    @Option(name: .long, help: "kvm or tcg (default: KILN_VM_ACCELERATOR, else a KVM probe).")
    var accelerator: String?

    @Option(name: .long, help: "The command to run as root once SSH answers.")
    var command = "uname -r"

    @Option(name: .long, help: "Where the VM's overlay and key are kept while it runs.")
    var scratch = "/var/tmp"

    @Flag(name: [.customShort("q"), .long], help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard timeout >= 1 else { throw ValidationError("--timeout must be at least 1 second") }
        if let accelerator, VirtualMachineAccelerator(rawValue: accelerator) == nil {
            throw ValidationError("--accelerator must be kvm or tcg (got '\(accelerator)')")
        }
    }

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let quiet = quiet
            let observer: @Sendable (String) -> Void = { if !quiet { TerminalOutput().progress($0) } }
            let machineDisk = try await MachineDisk.open(raw: disk)
            let options = VirtualMachineOptions(
                instanceType: try InstanceType.named(instanceType), sshTimeout: .seconds(timeout), scratchDirectory: scratch,
                accelerator: accelerator.flatMap(VirtualMachineAccelerator.init(rawValue:)))
            let command = command
            let (result, accelerator, seconds) = try await VirtualMachine.withBooted(
                disk: machineDisk, options: options, observer: observer
            ) { machine in
                (try await machine.run(command), machine.accelerator, machine.bootSeconds)
            }
            FileHandle.standardOutput.write(Data(result.output.utf8))
            print("accelerator \(accelerator.rawValue)")
            print("ssh-seconds \(String(format: "%.2f", seconds))")
            guard result.exitCode == 0 else {
                throw KilnError(
                    .execFailure,
                    "'\(command)' ended with status \(result.exitCode) in the VM booted from \(disk): \(result.errorOutput.suffix(500))")
            }
        }
    }
}

/// `kiln disk accelerator`: what test instance VMs would use here (kvm or tcg) and why.
struct DiskAcceleratorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accelerator",
        abstract: "Print kvm or tcg: KILN_VM_ACCELERATOR when set, else what a KVM probe guest shows (the reason goes to stderr)."
    )

    func run() async throws {
        print(await VirtualMachineAccelerator.current(observer: { TerminalOutput().progress($0) }).rawValue)
    }
}
