import Foundation
import KilnTestSupport
import Testing

/// Machine images end to end with the real parts: `kiln build` of an image recipe on
/// `bootstrap:debian:bookworm:vm` builds in runc, assembles a GPT disk, boots it under QEMU
/// (TCG here), runs the component's test phase over SSH and fetches its web page from the host,
/// then copies the disk into a directory region and an S3 region (moto_server).
@Suite(
    "Machine images: build, boot-test, distribute", .serialized,
    .enabled(
        if: TestEnvironment.requires(
            "runc", "mmdebstrap", "qemu-system-x86_64", "qemu-img", "sfdisk", "mkfs.ext4", "debugfs", "ssh", "ssh-keygen",
            "ssh-keyscan", "moto_server", "aws", "curl", "docker-registry", "skopeo")))
struct MachineImageTests {
    /// Shared with MachineDiskTests: the machine parent is bootstrapped once per machine.
    static let dataDirectory = "/var/tmp/kiln-machine"

    func record(_ result: Kiln.Result) throws -> [String: Any] {
        try #require(
            (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any], "\(result.stdout)\n\(result.stderr)")
    }

    func component(_ scratch: Scratch, nonce: String) throws {
        _ = try scratch.write(
            "web.yaml",
            """
            name: WebServer
            description: nginx with a page of its own
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Install
                    action: ExecuteBash
                    inputs:
                      commands:
                        - set -e
                        - apt-get update -qq
                        - DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
                        - echo 'kiln machine image \(nonce)' > /var/www/html/index.html
                        - systemctl enable nginx
                        - pwd > /etc/kiln-build-folder
              - name: validate
                steps:
                  - name: Installed
                    action: ExecuteBash
                    inputs:
                      commands: ["test -x /usr/sbin/nginx"]
              - name: test
                steps:
                  - name: Serves
                    action: ExecuteBash
                    inputs:
                      commands:
                        - systemctl is-active nginx
                        - exec 3<>/dev/tcp/127.0.0.1/80
                        - printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3
                        - cat <&3 | grep 'kiln machine image \(nonce)'
                  - name: Generalised
                    action: ExecuteBash
                    inputs:
                      commands:
                        - test "$(cat /etc/machine-id)" != ""
                        - test -s /etc/ssh/ssh_host_ed25519_key
                        - grep -q '^/var/lib/kiln-work/kiln-toe-' /etc/kiln-build-folder
            """)
    }

    @Test(
        "An image recipe with nginx becomes a disk that boots under QEMU, passes its test phase over SSH and an HTTP check from the host, and lands in a directory and an S3 region, each copy equal by digest; its raw disk boots again with plain QEMU through its bootloader"
    )
    func buildBootDistribute() throws {
        let s3 = try LoopbackServer(executable: "moto_server", arguments: { ["-H", "127.0.0.1", "-p", String($0)] })
        defer { s3.stop() }
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let scratch = Scratch("kiln-machine-image")
        defer { scratch.remove() }
        let environment = ["AWS_ACCESS_KEY_ID": "kilntest", "AWS_SECRET_ACCESS_KEY": "kilnsecret", "AWS_DEFAULT_REGION": "us-east-1"]
        let aws = "aws --endpoint-url \(s3.url)"
        try #require(try shell("\(aws) s3 mb s3://kiln-amis", environment: environment).status == 0)
        let nonce = UUID().uuidString.prefix(8).lowercased()
        try component(scratch, nonce: String(nonce))
        _ = try scratch.write(
            "kiln.yaml",
            """
            dataDirectory: \(Self.dataDirectory)
            regions:
              lab: {imageStore: {directory: \(scratch.path)/lab}, registry: "\(registry.host)", containerDiskRepository: web-disk}
              s3-lab: {imageStore: {s3: {endpoint: "\(s3.url)", bucket: kiln-amis, prefix: golden, accessKeyId: kilntest, secretAccessKey: kilnsecret}}}
            """)
        let pipeline = try scratch.write(
            "pipeline.yaml",
            """
            components:
              - {name: web, semanticVersion: 1.0.0, platform: Linux, uri: web.yaml}
            imageRecipes:
              - name: web-machine
                semanticVersion: 1.0.0
                parentImage: bootstrap:debian:bookworm:vm
                components: [{componentArn: web/1.x.x}]
                workingDirectory: /var/lib/kiln-work
                blockDeviceMappings: [{deviceName: /dev/xvda, ebs: {volumeSize: 3, volumeType: gp3}}]
                amiTags: {team: platform}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            distributionConfigurations:
              - name: disks
                distributions:
                  - region: lab
                    amiDistributionConfiguration:
                      name: "web {{ imagebuilder:buildDate }}"
                      description: "nginx golden image {{ imagebuilder:buildVersion }}"
                      amiTags: {stage: lab}
                      targetAccountIds: ["123456789012"]
                  - {region: s3-lab, amiDistributionConfiguration: {name: web-s3}}
            imagePipelines:
              - name: web-machine
                imageRecipeArn: web-machine/1.x.x
                infrastructureConfigurationArn: builders
                distributionConfigurationArn: disks
                kilnTests:
                  security: {pendingUpdates: false}
                  health: {httpPort: 80, httpPath: /, startupSeconds: 120}
            """)
        let built = try Kiln.run(["build", "-f", pipeline], in: scratch.path)
        let image = try record(built)
        try #require(image["status"] as? String == "AVAILABLE" && image["type"] as? String == "AMI", "\(built.stderr)")
        #expect(
            built.stderr.contains("ignored (no meaning for a disk file): blockDeviceMappings[0].ebs.volumeType")
                && built.stderr.contains("amiDistributionConfiguration targetAccountIds ignored"),
            "fields without a meaning here are listed: \(built.stderr)")

        let machine = try #require(image["machineImage"] as? [String: Any], "\(image)")
        let ami = machine["amiId"] as? String ?? ""
        #expect(ami.wholeMatch(of: #/ami-[0-9a-f]{17}/#) != nil, "\(ami)")
        #expect(machine["virtualSize"] as? Int == 3 << 30, "blockDeviceMappings volumeSize sets the disk: \(machine)")
        let disk = try #require(machine["disk"] as? String)
        let raw = try #require(machine["raw"] as? String)
        let digest = try #require(machine["digest"] as? String)
        #expect("sha256:" + (try shell("sha256sum \(disk)").output.prefix(64)) == digest)
        #expect((machine["bootSeconds"] as? Double ?? 0) > 0, "the boot time is recorded: \(machine)")
        let serial = try #require(machine["serialLog"] as? String)
        let console = (try? String(contentsOfFile: serial, encoding: .utf8)) ?? ""
        #expect(console.contains("Linux version"), "the serial console log is kept with the image")

        let report = try String(contentsOfFile: try #require(image["testResults"] as? String), encoding: .utf8)
        for passed in ["Serves", "Generalised", "reached multi-user.target", "http guest port 80/", "no world-writable files"] {
            #expect(report.contains("name=\"\(passed)\""), "\(passed) ran: \(report)")
        }
        #expect(!report.contains("<failure"), "\(report)")
        #expect(built.stderr.contains("answered 200"), "the page was fetched from the host through the forwarded port")

        let copies = try #require(machine["copies"] as? [[String: Any]], "\(machine)")
        #expect(Set(copies.compactMap { $0["region"] as? String }) == ["lab", "s3-lab"], "\(copies)")
        let local = try #require(copies.first { $0["region"] as? String == "lab" }?["location"] as? String)
        #expect(local.hasPrefix(scratch.path + "/lab/web-machine/1.0.0/") && local.hasSuffix("/\(ami).qcow2"), "\(local)")
        #expect("sha256:" + (try shell("sha256sum \(local)").output.prefix(64)) == digest, "the directory copy reads back equal")
        let about = try #require(
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: local.replacingOccurrences(of: ".qcow2", with: ".json"))))
                as? [String: Any])
        #expect((about["name"] as? String)?.hasPrefix("web 20") == true && about["imageId"] as? String == ami, "\(about)")
        #expect(about["tags"] as? [String: String] == ["team": "platform", "stage": "lab"], "\(about)")
        #expect((about["description"] as? String)?.hasSuffix("1.0.0/\(image["build"] as? Int ?? 0)") == true, "\(about)")
        let remote = try #require(copies.first { $0["region"] as? String == "s3-lab" }?["location"] as? String)
        #expect(remote.hasPrefix("s3://kiln-amis/golden/web-machine/1.0.0/"), "\(remote)")
        let back = try shell(
            "\(aws) s3 cp \(remote) \(scratch.file("back.qcow2")) >/dev/null && sha256sum \(scratch.file("back.qcow2"))",
            environment: environment)
        #expect("sha256:" + back.output.prefix(64) == digest, "the S3 copy reads back equal: \(back)")
        let ledger = (image["ledger"] as? [String: Any])?["regions"] as? [[String: Any]] ?? []
        #expect(ledger.count == 2, "both regions are metered: \(ledger)")
        let containerDisk = try #require((machine["containerDisks"] as? [String])?.first, "\(machine)")
        #expect(containerDisk.hasPrefix("\(registry.host)/web-disk:1.0.0@sha256:"), "\(containerDisk)")
        let pushed = try shell(
            "skopeo inspect --tls-verify=false --raw docker://\(registry.host)/web-disk:1.0.0 | sha256sum", includeStandardError: false)
        #expect(containerDisk.hasSuffix(String(pushed.output.prefix(64))), "the registry holds the containerDisk: \(pushed.output)")
        let roles = ((image["ledger"] as? [String: Any])?["instances"] as? [[String: Any]] ?? []).compactMap { $0["role"] as? String }
        #expect(roles.contains("builder") && roles.contains("test") && roles.contains("disk-assembly"), "\(roles)")

        // The API: GetImage through the AWS CLI lists one AMI per region the disk reached.
        let port = freeLoopbackPort()
        let serverConfig = try scratch.write(
            "server.yaml",
            "dataDirectory: \(Self.dataDirectory)\nlisten: 127.0.0.1:\(port)\ncredentials:\n  - {accessKeyId: AKIAKILNMACHINE, secretAccessKey: machine-secret}\n"
        )
        let server = Process()
        server.executableURL = URL(fileURLWithPath: Kiln.binary)
        server.arguments = ["server", "--config", serverConfig]
        let serverLog = scratch.path + "/server.log"
        FileManager.default.createFile(atPath: serverLog, contents: nil)
        server.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: serverLog))
        server.standardError = server.standardOutput
        try server.run()
        var waited = 0
        while !loopbackAccepts(port), waited < 300, server.isRunning {
            usleep(100_000)
            waited += 1
        }
        let amis = try shell(
            "aws imagebuilder get-image --endpoint-url http://127.0.0.1:\(port) --image-build-version-arn \(image["arn"] as? String ?? "") --query 'image.outputResources.amis[].[region,image,name]' --output text",
            environment: [
                "AWS_ACCESS_KEY_ID": "AKIAKILNMACHINE", "AWS_SECRET_ACCESS_KEY": "machine-secret", "AWS_DEFAULT_REGION": "us-east-1",
            ], includeStandardError: false)
        kill(server.processIdentifier, SIGTERM)
        server.waitUntilExit()
        let rows = amis.output.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        #expect(rows.count == 2 && rows.allSatisfy { $0.count == 3 && $0[1] == ami }, "\(amis.output)")
        #expect(rows.first { $0.first == "s3-lab" }?.last == "web-s3", "\(amis.output)")
        #expect(rows.first { $0.first == "lab" }?.last?.hasPrefix("web 20") == true, "\(amis.output)")

        // A machine image Kiln built is a parent by its ARN; the child's disk holds both builds' files.
        _ = try scratch.write(
            "child.yaml",
            """
            components:
              - name: motd
                semanticVersion: 1.0.0
                platform: Linux
                data: |
                  name: Motd
                  schemaVersion: 1.0
                  phases:
                    - name: build
                      steps:
                        - {name: Write, action: ExecuteBash, inputs: {commands: ["echo child of \(ami) > /etc/motd"]}}
            imageRecipes:
              - {name: web-child, semanticVersion: 1.0.0, parentImage: "\(image["arn"] as? String ?? "")", components: [{componentArn: motd/1.x.x}]}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            imagePipelines:
              - {name: web-child, imageRecipeArn: web-child/1.x.x, infrastructureConfigurationArn: builders, imageTestsConfiguration: {imageTestsEnabled: false}}
            """)
        let child = try record(try Kiln.run(["build", "-f", scratch.file("child.yaml")], in: scratch.path))
        #expect(child["status"] as? String == "AVAILABLE", "\(child)")
        let childDisk = try #require((child["machineImage"] as? [String: Any])?["raw"] as? String, "\(child)")
        let offset = try shell(
            "sfdisk --json \(childDisk) | python3 -c 'import json,sys; print(min(p[\"start\"] for p in json.load(sys.stdin)[\"partitiontable\"][\"partitions\"] if p.get(\"name\") == \"root\") * 512)'"
        )
        let files = try shell(
            "debugfs -R 'cat /etc/motd' '\(childDisk)?offset=\(offset.output.trimmingCharacters(in: .whitespacesAndNewlines))' 2>/dev/null; debugfs -R 'cat /var/www/html/index.html' '\(childDisk)?offset=\(offset.output.trimmingCharacters(in: .whitespacesAndNewlines))' 2>/dev/null"
        )
        #expect(
            files.output.contains("child of \(ami)") && files.output.contains("kiln machine image \(nonce)"),
            "the child's disk has its own file and the parent image's page: \(files.output)")

        // A disk from outside Kiln is a parent too: import-disk reads its root filesystem into a
        // layer without mounting it, and a recipe on the imported AMI makes a disk that boots and
        // passes its tests, with the set-uid and sticky bits the import kept.
        let importRun = try Kiln.run(["image", "import-disk", disk, "--name", "imported-web"], in: scratch.path)
        let imported = try record(importRun)
        #expect(imported["localName"] as? String != nil, "\(importRun.stderr)")
        #expect(importRun.stderr.contains("the image can be a parent image"), "\(importRun.stderr)")
        _ = try scratch.write(
            "imported.yaml",
            """
            components:
              - name: imported-motd
                semanticVersion: 1.0.0
                platform: Linux
                data: |
                  name: Motd
                  schemaVersion: 1.0
                  phases:
                    - name: build
                      steps:
                        - {name: Write, action: ExecuteBash, inputs: {commands: ["echo built on an imported disk > /etc/motd"]}}
                    - name: test
                      steps:
                        - {name: SetUid, action: ExecuteBash, inputs: {commands: ["test -u /usr/bin/passwd", "test -k /tmp"]}}
            imageRecipes:
              - {name: on-imported, semanticVersion: 1.0.0, parentImage: "\(imported["arn"] as? String ?? "")", components: [{componentArn: imported-motd/1.x.x}]}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            imagePipelines:
              - name: on-imported
                imageRecipeArn: on-imported/1.x.x
                infrastructureConfigurationArn: builders
                kilnTests: {security: {pendingUpdates: false}}
            """)
        let onImportedRun = try Kiln.run(["build", "-f", scratch.file("imported.yaml")], in: scratch.path)
        let onImported = try record(onImportedRun)
        #expect(onImported["status"] as? String == "AVAILABLE", "\(onImportedRun.stderr.suffix(3000))")
        let importedReport = (try? String(contentsOfFile: onImported["testResults"] as? String ?? "", encoding: .utf8)) ?? ""
        #expect(
            importedReport.contains("name=\"SetUid\"") && importedReport.contains("reached multi-user.target")
                && !importedReport.contains("<failure"), "\(importedReport)")
        let importedDisk = (onImported["machineImage"] as? [String: Any])?["raw"] as? String ?? ""
        let importedFiles = try shell(
            "debugfs -R 'cat /etc/motd' '\(importedDisk)?offset=\(offset.output.trimmingCharacters(in: .whitespacesAndNewlines))' 2>/dev/null; debugfs -R 'cat /var/www/html/index.html' '\(importedDisk)?offset=\(offset.output.trimmingCharacters(in: .whitespacesAndNewlines))' 2>/dev/null"
        )
        #expect(
            importedFiles.output.contains("built on an imported disk") && importedFiles.output.contains("kiln machine image \(nonce)"),
            "the disk built on the imported one has its own file and the imported disk's page: \(importedFiles.output)")

        // The raw disk, outside Kiln: SeaBIOS, the installed bootloader, the kernel, sshd with first-boot keys.
        let booted = try shell(
            """
            port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
            cp --sparse=always \(raw) \(scratch.file("plain.raw"))
            qemu-system-x86_64 -machine q35 -accel tcg -m 1024 -nodefaults -display none -no-reboot \\
                -drive file=\(scratch.file("plain.raw")),format=raw,if=virtio -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22 \\
                -device virtio-net-pci,netdev=n0 -serial file:\(scratch.file("plain-serial.log")) </dev/null >\(scratch.file("plain-qemu.log")) 2>&1 &
            qemu=$!
            answer=
            while [ $SECONDS -lt 300 ] && kill -0 $qemu 2>/dev/null; do
                answer=$(ssh-keyscan -T 5 -p $port 127.0.0.1 2>&1)
                if echo "$answer" | grep -q ssh-ed25519; then echo "sshd answered after $SECONDS s"; break; fi
                sleep 2
            done
            echo "last ssh-keyscan: $answer"; echo "qemu: $(cat \(scratch.file("plain-qemu.log")))"; tail -5 \(scratch.file("plain-serial.log"))
            kill -9 $qemu 2>/dev/null; wait $qemu 2>/dev/null; true
            """)
        #expect(booted.output.contains("sshd answered"), "plain QEMU boots the raw disk through its bootloader: \(booted.output)")
    }

    @Test("A disk that cannot boot ends FAILED in TEST at step boot, with the serial console's last lines and its log attached")
    func unbootable() throws {
        let scratch = Scratch("kiln-machine-unbootable")
        defer { scratch.remove() }
        _ = try scratch.write(
            "break.yaml",
            """
            name: BreakInit
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: RemoveInit
                    action: ExecuteBash
                    inputs:
                      commands: ["rm -f /sbin/init /lib/systemd/systemd /usr/lib/systemd/systemd"]
            """)
        _ = try scratch.write("kiln.yaml", "dataDirectory: \(Self.dataDirectory)\n")
        let pipeline = try scratch.write(
            "pipeline.yaml",
            """
            components:
              - {name: break, semanticVersion: 1.0.0, platform: Linux, uri: break.yaml}
            imageRecipes:
              - {name: broken-machine, semanticVersion: 1.0.0, parentImage: "bootstrap:debian:bookworm:vm", components: [{componentArn: break/1.x.x}]}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            imagePipelines:
              - {name: broken, imageRecipeArn: broken-machine/1.x.x, infrastructureConfigurationArn: builders, kilnTests: {functionality: {bootSeconds: 240}}}
            """)
        let built = try Kiln.run(["build", "-f", pipeline], in: scratch.path)
        let image = try record(built)
        let failure = image["failure"] as? [String: Any] ?? [:]
        #expect(image["status"] as? String == "FAILED", "\(built.stderr)")
        #expect(failure["stage"] as? String == "TEST" && failure["step"] as? String == "boot", "\(failure)")
        let reason = failure["reason"] as? String ?? ""
        #expect(reason.contains("the serial console ended with") && reason.contains("init"), "\(reason)")
        let log = try #require(failure["log"] as? String)
        #expect(log.hasSuffix("serial.log") && FileManager.default.fileExists(atPath: log), "\(failure)")
    }
}
