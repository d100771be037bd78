import Foundation
import KilnTestSupport
import Testing

/// `kiln image import-disk` with disks made here by sfdisk and qemu-img: raw, qcow2 and one-file
/// vmdk become AVAILABLE AMIs whose qcow2 holds the same blocks; disks that name host files are
/// refused before anything is written.
@Suite(
    "kiln image import-disk and export-disk", .serialized,
    .enabled(if: TestEnvironment.requires("qemu-img", "sfdisk", "mkfs.ext4", "debugfs", "moto_server", "aws")))
struct ImportDiskTests {
    @Test("raw, qcow2 and vmdk import as AMIs with the same blocks; overlays, vmdk descriptors and non-disks are refused")
    func imports() throws {
        let scratch = Scratch("kiln-import-disk")
        defer { scratch.remove() }
        let config = try scratch.write("kiln.yaml", "dataDirectory: \(scratch.path)/data\n")
        let made = try shell(
            """
            cd \(scratch.path) && truncate -s 64M disk.raw && printf 'label: gpt\\n,,L\\n' | sfdisk -q disk.raw \\
            && printf 'kiln-import-disk' | dd of=disk.raw bs=1 seek=1048576 conv=notrunc status=none \\
            && qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2 \\
            && qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw disk.vmdk
            """)
        try #require(made.status == 0, "\(made.output)")

        var amis: Set<String> = []
        for file in ["disk.raw", "disk.qcow2", "disk.vmdk"] {
            let result = try Kiln.run(["image", "import-disk", file, "--name", "imported", "--config", config], in: scratch.path)
            try #require(result.status == 0, "\(file): \(result.stderr)")
            let record = try #require(
                (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any], "\(result.stdout)")
            #expect(record["status"] as? String == "AVAILABLE" && record["type"] as? String == "AMI", "\(record)")
            let machine = try #require(record["machineImage"] as? [String: Any], "\(record)")
            let ami = machine["amiId"] as? String ?? ""
            #expect(ami.wholeMatch(of: #/ami-[0-9a-f]{17}/#) != nil, "\(ami)")
            amis.insert(ami)
            #expect(machine["virtualSize"] as? Int == 64 << 20)
            let disk = try #require(machine["disk"] as? String)
            let same = try shell("qemu-img compare -f raw -F qcow2 \(scratch.file("disk.raw")) \(disk)")
            #expect(same.status == 0, "\(file): the imported qcow2 holds the same blocks: \(same.output)")
            let digest = try shell("sha256sum \(disk)").output.prefix(64)
            #expect(machine["digest"] as? String == "sha256:" + digest)
            // Imported all the same, but with no root filesystem it cannot be a parent, and says why.
            #expect(record["localName"] == nil, "\(record)")
            #expect(
                (machine["parentRefusal"] as? String)?.contains("no root filesystem found") == true
                    && result.stderr.contains("cannot be a parent image"), "\(file): \(machine) \(result.stderr)")
        }
        #expect(amis.count == 3, "each import is its own build with its own AMI id")
        let listed = try Kiln.run(["images", "--config", config], in: scratch.path)
        #expect(listed.stdout.contains("imported/1.0.0/3"), "\(listed.stdout)")

        // A recipe naming it as its parent fails in BUILD with that reason, before any builder.
        let recipe = try scratch.write(
            "on-imported.yaml",
            """
            components:
              - {name: noop, semanticVersion: 1.0.0, platform: Linux, data: "name: Noop\\nschemaVersion: 1.0\\nphases:\\n  - name: build\\n    steps:\\n      - {name: N, action: ExecuteBash, inputs: {commands: [true]}}\\n"}
            imageRecipes:
              - {name: on-imported, semanticVersion: 1.0.0, parentImage: "arn:aws:imagebuilder:us-east-1:000000000000:image/imported/x.x.x", components: [{componentArn: noop/1.x.x}]}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            imagePipelines:
              - {name: on-imported, imageRecipeArn: on-imported/1.x.x, infrastructureConfigurationArn: builders}
            """)
        let refusedParent = try Kiln.run(["build", "-f", recipe, "--config", config], in: scratch.path)
        #expect(
            refusedParent.status != 0 && refusedParent.stderr.contains("was imported from a disk whose root filesystem Kiln cannot read")
                && refusedParent.stderr.contains("no root filesystem found"), "\(refusedParent.stderr)")

        let hostile = try shell(
            """
            cd \(scratch.path) && qemu-img create -q -f qcow2 -b /etc/hostname -F raw overlay.qcow2 \\
            && printf '# Disk DescriptorFile\\nversion=1\\nCID=fffffffe\\nparentCID=ffffffff\\ncreateType="monolithicFlat"\\nRW 2048 FLAT "/etc/hostname" 0\\n' > descriptor.vmdk \\
            && head -c 4M /dev/urandom > noise.bin && printf 'hello' > note.txt
            """)
        try #require(hostile.status == 0, "\(hostile.output)")
        for (file, message) in [
            ("overlay.qcow2", "is a qcow2 overlay of /etc/hostname"),
            ("descriptor.vmdk", "is a vmdk descriptor whose data is in other files"),
            ("noise.bin", "is not a disk Kiln can import"),
            ("note.txt", "is not a disk Kiln can import"),
        ] {
            let refused = try Kiln.run(["image", "import-disk", file, "--name", "hostile", "--config", config], in: scratch.path)
            #expect(refused.status != 0 && refused.stderr.contains(message), "\(file): \(refused.stderr)")
        }
        let after = try Kiln.run(["images", "--config", config], in: scratch.path)
        #expect(!after.stdout.contains("hostile/"), "a refused disk leaves no image: \(after.stdout)")
    }

    @Test(
        "ImportDiskImage through the AWS CLI: a qcow2 in a region's S3 bucket and a raw disk in a region's folder become AVAILABLE AMIs whose root can be a parent; a bucket or path outside the regions, a Windows platform and a non-disk are refused"
    )
    func importThroughAPI() throws {
        let s3 = try LoopbackServer(executable: "moto_server", arguments: { ["-H", "127.0.0.1", "-p", String($0)] })
        defer { s3.stop() }
        let scratch = Scratch("kiln-import-api")
        defer { scratch.remove() }
        let environment = ["AWS_ACCESS_KEY_ID": "kilntest", "AWS_SECRET_ACCESS_KEY": "kilnsecret", "AWS_DEFAULT_REGION": "us-east-1"]
        let aws = "aws --endpoint-url \(s3.url)"
        let made = try shell(
            """
            set -e
            cd \(scratch.path)
            mkdir -p tree/etc tree/usr/bin lab-disks
            echo 'ID=debian' > tree/etc/os-release; echo tool > tree/usr/bin/tool; chmod 4755 tree/usr/bin/tool
            truncate -s 64M lab-disks/disk.raw
            printf 'label: gpt\\nstart=2048, name=root\\n' | sfdisk -q lab-disks/disk.raw
            mkfs.ext4 -q -F -d tree -E offset=1048576 lab-disks/disk.raw 60M
            qemu-img convert -f raw -O qcow2 lab-disks/disk.raw disk.qcow2
            head -c 1M /dev/urandom > noise.bin
            \(aws) s3 mb s3://kiln-imports >/dev/null
            \(aws) s3 cp disk.qcow2 s3://kiln-imports/in/disk.qcow2 >/dev/null
            \(aws) s3 cp noise.bin s3://kiln-imports/in/noise.bin >/dev/null
            """, environment: environment)
        try #require(made.status == 0, "\(made.output)")
        let server = try KilnServerUnderTest(
            regions: [:],
            regionsBlock: """
                regions:
                  lab: {imageStore: {directory: \(scratch.path)/lab-disks}}
                  s3-lab: {imageStore: {s3: {endpoint: "\(s3.url)", bucket: kiln-imports, prefix: golden, accessKeyId: kilntest, secretAccessKey: kilnsecret}}}

                """)
        defer { server.stop() }
        let cli = server.cli
        let suffix = String(UUID().uuidString.prefix(8)).lowercased()
        let infrastructure = cli(
            "create-infrastructure-configuration", "--name", "import-\(suffix)", "--instance-profile-name", "kiln", "--instance-types",
            "t3.small")
        infrastructure.expectAccepted()
        let infrastructureArn = infrastructure.string("infrastructureConfigurationArn") ?? ""
        func importDisk(_ uri: String, name: String, platform: String = "Linux") -> APIOutcome {
            cli(
                "import-disk-image", "--name", name, "--semantic-version", "1.0.0", "--platform", platform, "--os-version", "Debian 12",
                "--infrastructure-configuration-arn", infrastructureArn, "--uri", uri)
        }

        var imported: [String] = []
        for (uri, name) in [
            ("s3://kiln-imports/in/disk.qcow2", "from-s3-\(suffix)"),
            ("\(scratch.path)/lab-disks/disk.raw", "from-folder-\(suffix)"),
        ] {
            let started = importDisk(uri, name: name)
            started.expectAccepted()
            let arn = try #require(started.string("imageBuildVersionArn"), "\(started)")
            #expect(arn.hasSuffix(":image/\(name)/1.0.0/1"), "\(arn)")
            let state = server.waitForImage(arn, cli: cli, seconds: 120)
            #expect(state["status"] == "AVAILABLE", "\(uri): \(state) \(server.logTail())")
            let image = cli("get-image", "--image-build-version-arn", arn)
            #expect(image.string("image.type") == "AMI" && image.string("image.buildType") == "IMPORT", "\(image)")
            #expect(image.string("image.outputResources.amis.0.image")?.wholeMatch(of: #/ami-[0-9a-f]{17}/#) != nil, "\(image)")
            imported.append(arn)
        }
        #expect(
            server.log.components(separatedBy: "the image can be a parent image").count == 3,
            "both roots were read into layers: \(server.logTail())")

        importDisk("s3://somebody-else/disk.qcow2", name: "refused-\(suffix)").expectRefused(
            "InvalidParameterValueException", saying: "no region in kiln.yaml keeps disks in the bucket somebody-else")
        importDisk("/etc/hostname", name: "refused-\(suffix)").expectRefused(
            "InvalidParameterValueException", saying: "is outside every region's imageStore folder")
        importDisk("\(scratch.path)/lab-disks/../disk.qcow2", name: "refused-\(suffix)").expectRefused(
            "InvalidParameterValueException", saying: "is outside every region's imageStore folder")
        importDisk("s3://kiln-imports/in/disk.qcow2", name: "refused-\(suffix)", platform: "Windows").expectRefused(
            "InvalidParameterValueException", saying: "not Windows ISOs")

        // DeleteImage removes the image's own disk from the data directory; the source stays.
        let folder = "\(sharedDataDirectory)/images/from-s3-\(suffix)/1.0.0/1"
        #expect(FileManager.default.fileExists(atPath: folder + "/disk.qcow2"))
        cli("delete-image", "--image-build-version-arn", imported[0]).expectAccepted()
        #expect(!FileManager.default.fileExists(atPath: folder + "/disk.qcow2"), "the deleted image's disk is removed")
        #expect(server.log.contains("deleted: kiln:from-s3-\(suffix):1.0.0-1 untagged"), "\(server.logTail())")
        cli("get-image", "--image-build-version-arn", imported[0]).expectRefused("ResourceNotFoundException", saying: "does not exist")
        #expect(FileManager.default.fileExists(atPath: scratch.file("lab-disks/disk.raw")), "an imported file is left where it was")

        let noise = importDisk("s3://kiln-imports/in/noise.bin", name: "noise-\(suffix)")
        noise.expectAccepted()
        let noiseState = server.waitForImage(noise.string("imageBuildVersionArn") ?? "", cli: cli, seconds: 120)
        #expect(
            noiseState["status"] == "FAILED" && noiseState["reason"]?.contains("is not a disk Kiln can import") == true, "\(noiseState)")
    }

    @Test(
        "export-disk: vmdk to a directory region and vhdx to an S3 region (moto_server), each read back by digest, the same blocks, charged to the ledger"
    )
    func exports() throws {
        let s3 = try LoopbackServer(executable: "moto_server", arguments: { ["-H", "127.0.0.1", "-p", String($0)] })
        defer { s3.stop() }
        let scratch = Scratch("kiln-export-disk")
        defer { scratch.remove() }
        let environment = ["AWS_ACCESS_KEY_ID": "kilntest", "AWS_SECRET_ACCESS_KEY": "kilnsecret", "AWS_DEFAULT_REGION": "us-east-1"]
        let aws = "aws --endpoint-url \(s3.url)"
        try #require(try shell("\(aws) s3 mb s3://kiln-amis", environment: environment).status == 0)
        let config = try scratch.write(
            "kiln.yaml",
            """
            dataDirectory: \(scratch.path)/data
            regions:
              lab: {imageStore: {directory: \(scratch.path)/lab}}
              s3-lab: {imageStore: {s3: {endpoint: "\(s3.url)", bucket: kiln-amis, prefix: golden, accessKeyId: kilntest, secretAccessKey: kilnsecret}}}
              registry-only: {registry: "127.0.0.1:1"}
            """)
        let made = try shell(
            """
            cd \(scratch.path) && truncate -s 32M disk.raw && printf 'label: gpt\\n,,L\\n' | sfdisk -q disk.raw \\
            && head -c 3M /dev/urandom | dd of=disk.raw bs=1M seek=2 conv=notrunc status=none
            """)
        try #require(made.status == 0, "\(made.output)")
        let imported = try Kiln.run(["image", "import-disk", "disk.raw", "--name", "exported", "--config", config], in: scratch.path)
        try #require(imported.status == 0, "\(imported.stderr)")

        var copies: [String: [String: Any]] = [:]
        for (format, region) in [("vmdk", "lab"), ("vhdx", "s3-lab")] {
            let result = try Kiln.run(
                ["image", "export-disk", "exported/1.0.0/1", "--format", format, "--region", region, "--config", config], in: scratch.path)
            try #require(result.status == 0, "\(format): \(result.stderr)")
            copies[region] = try #require((try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any])
        }
        let local = try #require(copies["lab"]?["location"] as? String)
        #expect(local.hasPrefix(scratch.path + "/lab/exported/1.0.0/1/ami-") && local.hasSuffix(".vmdk"), "\(local)")
        #expect(try shell("sha256sum \(local)").output.prefix(64) == (copies["lab"]?["digest"] as? String)?.dropFirst(7))
        #expect(
            try shell("qemu-img compare -f raw -F vmdk \(scratch.file("disk.raw")) \(local)").status == 0, "the vmdk holds the same blocks")

        let remote = try #require(copies["s3-lab"]?["location"] as? String)
        #expect(remote.hasPrefix("s3://kiln-amis/golden/exported/1.0.0/1/ami-") && remote.hasSuffix(".vhdx"), "\(remote)")
        let back = try shell(
            "\(aws) s3 cp \(remote) \(scratch.file("back.vhdx")) >/dev/null && sha256sum \(scratch.file("back.vhdx"))",
            environment: environment)
        #expect(back.output.prefix(64) == (copies["s3-lab"]?["digest"] as? String)?.dropFirst(7), "\(back.output)")
        #expect(try shell("qemu-img compare -f raw -F vhdx \(scratch.file("disk.raw")) \(scratch.file("back.vhdx"))").status == 0)

        let shown = try Kiln.run(["images", "show", "exported/1.0.0/1", "--config", config], in: scratch.path)
        let record = try #require((try? JSONSerialization.jsonObject(with: Data(shown.stdout.utf8))) as? [String: Any])
        #expect(((record["machineImage"] as? [String: Any])?["copies"] as? [Any])?.count == 2, "\(record)")
        let regions = (record["ledger"] as? [String: Any])?["regions"] as? [[String: Any]] ?? []
        for region in regions {
            let name = region["region"] as? String ?? ""
            #expect(region["transferredBytes"] as? Int == copies[name]?["bytes"] as? Int, "\(region)")
        }
        #expect(regions.count == 2, "\(regions)")

        let refused = try Kiln.run(
            ["image", "export-disk", "exported/1.0.0/1", "--region", "registry-only", "--config", config], in: scratch.path)
        #expect(
            refused.status != 0 && refused.stderr.contains("region registry-only has no imageStore")
                && refused.stderr.contains("lab, s3-lab"), "\(refused.stderr)")
    }
}
