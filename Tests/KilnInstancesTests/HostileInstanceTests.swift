import Foundation
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE
import KilnTestSupport
import Testing

@testable import KilnInstances

#if canImport(Glibc)
    import Glibc
#endif

/// Instances whose content attacks the host-side work Kiln does on their files: a process left
/// running that swaps folders for symlinks, FIFOs and device nodes where Kiln reads or writes,
/// and a /tmp that points elsewhere.
@Suite(
    "Hostile instance content stays inside the instance", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct HostileInstanceTests {
    /// An image with static tools: `swapper DIR TARGET` forks a daemon that keeps replacing DIR
    /// with a symlink to TARGET and back; `hello` writes to stdout. `extra` adds entries.
    static func image(_ fixture: InstanceFixture, name: String, extra: (String) throws -> Void = { _ in }) throws -> Descriptor {
        let source = fixture.directory + "/src-\(name)"
        let root = source + "/rootfs"
        for folder in ["/bin", "/etc", "/tmp", "/work"] {
            try FileManager.default.createDirectory(atPath: root + folder, withIntermediateDirectories: true)
        }
        try "root:x:0:0:root:/root:/bin/false\n".write(toFile: root + "/etc/passwd", atomically: true, encoding: .utf8)
        try "root:x:0:\nstaff:x:50:\n".write(toFile: root + "/etc/group", atomically: true, encoding: .utf8)
        try """
        #define _GNU_SOURCE
        #include <dirent.h>
        #include <errno.h>
        #include <arpa/inet.h>
        #include <netinet/in.h>
        #include <stdlib.h>
        #include <sys/time.h>
        #include <sched.h>
        #include <signal.h>
        #include <stdio.h>
        #include <string.h>
        #include <sys/socket.h>
        #include <sys/syscall.h>
        #include <unistd.h>
        static void report(const char *name, long result) { printf("%s=%s\\n", name, result < 0 ? strerror(errno) : "allowed"); }
        int main(int argc, char **argv) {
            const char *tool = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
            if (strcmp(tool, "connect") == 0 && argc == 3) {
                struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
                inet_pton(AF_INET, argv[1], &address.sin_addr);
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                struct timeval limit = {.tv_sec = 3};
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
                report("connect", connect(fd, (struct sockaddr *)&address, sizeof address));
                return 0;
            }
            if (strcmp(tool, "probe") == 0) {
                report("unshare-user", unshare(CLONE_NEWUSER));
                report("clone-user", syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0) == 0 ? (_exit(0), 0) : -1);
                report("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
                report("bpf", syscall(SYS_bpf, 0, 0, 0));
                report("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
                report("raw-socket", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
                FILE *interrupts = fopen("/proc/interrupts", "r");
                long bytes = 0;
                if (interrupts) { while (fgetc(interrupts) != EOF) bytes++; }
                printf("interrupts-bytes=%ld\\n", bytes);
                return 0;
            }
            if (strcmp(tool, "swapper") == 0 && argc == 3) {
                char aside[4096];
                snprintf(aside, sizeof aside, "%s.real", argv[1]);
                if (fork() != 0) return 0;
                setsid();
                close(0); close(1); close(2);
                for (;;) {
                    if (rename(argv[1], aside) == 0) {
                        symlink(argv[2], argv[1]);
                        unlink(argv[1]);
                        rename(aside, argv[1]);
                    }
                }
            }
            puts("hello");
            return 0;
        }
        """.write(toFile: source + "/tools.c", atomically: true, encoding: .utf8)
        let built = try shell(
            "cd \(source) && gcc -static -O1 -o rootfs/bin/swapper tools.c && ln rootfs/bin/swapper rootfs/bin/hello && ln rootfs/bin/swapper rootfs/bin/probe && ln rootfs/bin/swapper rootfs/bin/connect"
        )
        #expect(built.status == 0, "\(built.text)")
        try extra(root)
        return try fixture.host.store.importRootFilesystem(root, name: name, sourceDateEpoch: 0)
    }

    /// A host folder an instance must never reach: its files' bytes, modes and times are recorded.
    struct Canary {
        let path: String
        static let secret = "CANARY-SECRET-7f3a9c"

        init() throws {
            var template = Array("/var/tmp/kiln-canary.XXXXXX".utf8CString)
            path = String(cString: mkdtemp(&template)!)
            chmod(path, 0o755)
            try FileManager.default.createDirectory(atPath: path + "/sub", withIntermediateDirectories: true)
            for file in ["a.txt", "sub/b.txt"] {
                try "\(Self.secret) \(file)\n".write(toFile: path + "/" + file, atomically: true, encoding: .utf8)
                chmod(path + "/" + file, 0o640)
            }
        }

        /// Every entry with its type, mode, owner, size, mtime and bytes.
        func state() throws -> [String] {
            var lines: [String] = []
            let enumerator = FileManager.default.enumerator(atPath: path)
            var names = [""]
            while let name = enumerator?.nextObject() as? String { names.append(name) }
            for name in names.sorted() {
                var info = stat()
                lstat(path + "/" + name, &info)
                let bytes = info.st_mode & S_IFMT == S_IFREG ? (FileManager.default.contents(atPath: path + "/" + name) ?? Data()) : Data()
                lines.append(
                    "\(name) \(String(info.st_mode, radix: 8)) \(info.st_uid):\(info.st_gid) \(info.st_size) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec) \(Digest(sha256Of: bytes))"
                )
            }
            return lines
        }
    }

    @Test("A daemon swapping a folder for a symlink to a host folder: packing and file actions never touch or copy the host's files")
    func daemonLeftBehind() async throws {
        let fixture = try InstanceFixture()
        let canary = try Canary()
        defer { try? FileManager.default.removeItem(atPath: canary.path) }
        let before = try canary.state()
        let image = try Self.image(fixture, name: "swap")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .none))
        let session = instance.session
        try await session.createDirectory("/work/dir/sub", mode: 0o755)
        for file in ["a.txt", "sub/b.txt"] {
            try await session.writeFile("/work/dir/" + file, contents: Data("instance \(file)\n".utf8), append: false, mode: 0o644)
        }
        let started = try await session.exec(
            ExecRequest(executable: "/bin/swapper", arguments: ["/work/dir", canary.path]), output: { _, _ in })
        #expect(started.exitCode == 0)
        var packedSecrets = 0
        var since: DirectoryState?
        for round in 0..<25 {
            // Each call may fail (the folder is a dangling link at that moment); none may reach the host.
            _ = try? await session.setPermissions("/work/dir", mode: 0o700, recursive: true)
            _ = try? await session.setOwner("/work/dir", owner: "1000", group: "1000", recursive: true)
            _ = try? await session.writeFile("/work/dir/sub/new-\(round).txt", contents: Data("x".utf8), append: false, mode: 0o666)
            if let read = try? await session.readFile("/work/dir/a.txt") {
                #expect(!String(decoding: read, as: UTF8.self).contains(Canary.secret))
            }
            _ = try? await session.copy("/work/dir", to: "/work/copy-\(round)")
            _ = try? await session.remove("/work/dir/sub/b.txt", recursive: false)
            _ = try? await session.exportFile("/work/dir/a.txt", toHost: fixture.directory + "/exported-\(round)")
            if let exported = FileManager.default.contents(atPath: fixture.directory + "/exported-\(round)") {
                #expect(!String(decoding: exported, as: UTF8.self).contains(Canary.secret))
            }
            let (layer, state) = try instance.packLayer(since: since, sourceDateEpoch: 0)
            since = state
            let tar = try shell("gzip -dc \(fixture.host.store.path(of: layer.descriptor.digest)) | grep -c \(Canary.secret) || true")
            packedSecrets += Int(tar.text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        await instance.destroy()
        #expect(packedSecrets == 0, "a packed layer held the host canary's bytes")
        #expect(try canary.state() == before, "the host canary folder was changed")
        await fixture.remove()
    }

    @Test("Instances get Docker's default isolation: no user namespaces, keyctl, bpf, perf or raw sockets; kernel files masked")
    func isolation() async throws {
        let fixture = try InstanceFixture()
        let image = try Self.image(fixture, name: "probe")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .none))
        let output = OutputCollector()
        let result = try await instance.session.exec(ExecRequest(executable: "/bin/probe"), output: { _, bytes in output.append(bytes) })
        let config = try String(contentsOfFile: instance.directory + "/bundle/config.json", encoding: .utf8)
        await instance.destroy()
        #expect(result.exitCode == 0)
        let lines = output.text.split(separator: "\n").map(String.init)
        for call in ["unshare-user", "clone-user", "keyctl", "bpf", "perf_event_open", "raw-socket"] {
            #expect(lines.contains("\(call)=Operation not permitted"), "\(call): \(output.text)")
        }
        #expect(lines.contains("interrupts-bytes=0"), "masked like Docker: \(output.text)")
        #expect(config.contains("virtual\\/powercap") || config.contains("virtual/powercap"), "masked where the host has it")
        await fixture.remove()
    }

    @Test("An isolated instance reaches a host service on 0.0.0.0 as host.kiln.internal, but not one on the host's loopback")
    func isolatedNetwork() async throws {
        let fixture = try InstanceFixture()
        let open = try LoopbackServer(executable: "python3", arguments: { ["-m", "http.server", String($0), "--bind", "0.0.0.0"] })
        defer { open.stop() }
        let loopbackOnly = try LoopbackServer(
            executable: "python3", arguments: { ["-m", "http.server", String($0), "--bind", "127.0.0.1"] })
        defer { loopbackOnly.stop() }
        let image = try Self.image(fixture, name: "net")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .isolated))
        // What runc binds at the instance's /etc/hosts.
        let hosts = try String(contentsOfFile: instance.directory + "/hosts", encoding: .utf8)
        let line = hosts.split(separator: "\n").first { $0.hasSuffix("\thost.kiln.internal") }
        #expect(line != nil, "\(hosts)")
        let hostAddress = line.map { String($0.split(separator: "\t")[0]) } ?? "0.0.0.0"
        func connect(_ address: String, _ port: Int) async throws -> String {
            let output = OutputCollector()
            _ = try await instance.session.exec(
                ExecRequest(executable: "/bin/connect", arguments: [address, String(port)]), output: { _, bytes in output.append(bytes) })
            return output.text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let reached = try await connect(hostAddress, open.port)
        let loopbackFromInside = try await connect("127.0.0.1", loopbackOnly.port)
        let loopbackViaHost = try await connect(hostAddress, loopbackOnly.port)
        let namespace = FileManager.default.fileExists(atPath: "/run/netns/\(instance.id)")
        await instance.destroy()
        #expect(reached == "connect=allowed", "a service on 0.0.0.0 is reachable at host.kiln.internal (\(hostAddress))")
        #expect(loopbackFromInside == "connect=Connection refused", "the instance's 127.0.0.1 is its own")
        #expect(loopbackViaHost != "connect=allowed", "a service bound to the host's loopback is out of reach: \(loopbackViaHost)")
        #expect(namespace, "the instance had its own named network namespace")
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/\(instance.id)"), "destroy removed the namespace")
        #expect(try shell("ip -o link show | grep -c kv\(instance.id.dropFirst(5).prefix(12)) || true").text.hasPrefix("0"))
        #expect(
            try shell("iptables -w -C FORWARD -s 10.213.0.0/16 -d 169.254.0.0/16 -j DROP").status == 0,
            "link-local addresses (a cloud metadata service) are out of reach")
        await fixture.remove()
    }

    @Test("An image whose /etc/group is a FIFO is refused before runc starts, naming the file")
    func fifoAccountFile() async throws {
        let fixture = try InstanceFixture()
        let image = try Self.image(fixture, name: "fifo") { root in
            unlink(root + "/etc/group")
            #expect(mkfifo(root + "/etc/group", 0o644) == 0)
        }
        await #expect {
            let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .none))
            await instance.destroy()
        } throws: { error in
            "\(error)".contains("/etc/group is a FIFO, not a regular file")
        }
        #expect(await ContainerInstance.list(on: fixture.host).isEmpty, "the refused instance was removed")
        await fixture.remove()
    }

    @Test("ReadFile of a FIFO and CreateFile onto a device node from a layer are refused, never opened as such")
    func fifoAndDevice() async throws {
        let fixture = try InstanceFixture()
        let image = try Self.image(fixture, name: "devices") { root in
            #expect(mkfifo(root + "/work/pipe", 0o644) == 0)
            // /dev/null's numbers: harmless if opened, but opening it is the bug.
            #expect(mknod(root + "/work/device", S_IFCHR | 0o666, dev_t((1 << 8) | 3)) == 0)
        }
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .none))
        let session = instance.session
        await #expect {
            _ = try await session.readFile("/work/pipe")
        } throws: { error in
            "\(error)".contains("'/work/pipe' in the") && "\(error)".contains("is a FIFO, not a regular file")
        }
        await #expect {
            try await session.writeFile("/work/device", contents: Data("script".utf8), append: false, mode: 0o755)
        } throws: { error in
            "\(error)".contains("/work/device")
        }
        await #expect {
            try await session.copy("/work/pipe", to: "/work/pipe-copy")
        } throws: { error in
            "\(error)".contains("is a FIFO; Kiln copies only files, folders and symlinks")
        }
        await instance.destroy()
        await fixture.remove()
    }

    @Test("An exec that starts while Kiln has the instance frozen waits for the thaw instead of failing")
    func execDuringFreeze() async throws {
        let fixture = try InstanceFixture()
        let image = try Self.image(fixture, name: "paused")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .none))
        let output = OutputCollector()
        let result = try await instance.whileFrozen {
            let started = Task {
                try await instance.session.exec(ExecRequest(executable: "/bin/hello"), output: { _, bytes in output.append(bytes) })
            }
            try await Task.sleep(for: .milliseconds(300))
            return started
        }.value
        await instance.destroy()
        #expect(result.exitCode == 0, "\(output.text)")
        #expect(output.text.contains("hello"))
        await fixture.remove()
    }

    @Test("ReadFile of a huge sparse file is refused by its size before anything is read")
    func hugeSparseFile() async throws {
        let fixture = try InstanceFixture()
        let image = try Self.image(fixture, name: "sparse")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .none))
        // 1 TiB of holes: a step can make one with truncate in a blink.
        try await instance.session.writeFile("/work/huge", contents: Data(), append: false, mode: 0o644)
        #expect(truncate(instance.hostView + "/work/huge", 1 << 40) == 0)
        await #expect {
            _ = try await instance.session.readFile("/work/huge")
        } throws: { error in
            "\(error)".contains("'/work/huge' in the") && "\(error)".contains("is 1099511627776 bytes; Kiln reads at most 64 MiB")
        }
        await instance.destroy()
        await fixture.remove()
    }

    @Test("An image whose /tmp is a symlink to a host path gets its scratch folder inside the instance")
    func temporaryFolderSymlink() async throws {
        let fixture = try InstanceFixture()
        let target = "/var/tmp/kiln-tmp-target-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: target) }
        let image = try Self.image(fixture, name: "tmplink") { root in
            try FileManager.default.removeItem(atPath: root + "/tmp")
            try FileManager.default.createSymbolicLink(atPath: root + "/tmp", withDestinationPath: target)
        }
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(network: .none))
        let session = instance.session
        try await session.createDirectory(target, mode: 0o1777)
        let scratch = try await session.makeScratchDirectory()
        #expect(scratch.hasPrefix(target + "/kiln-toe."), "the link is followed inside the instance")
        #expect(!FileManager.default.fileExists(atPath: target), "nothing was created at the host path")
        #expect(FileManager.default.fileExists(atPath: instance.upper + scratch))
        await instance.destroy()
        await fixture.remove()
    }
}
