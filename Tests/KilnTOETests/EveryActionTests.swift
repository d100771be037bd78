import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnTOE

#if canImport(Glibc)
    import Glibc
#endif

@Suite("One document that uses every Linux action", .serialized, .enabled(if: TestEnvironment.requires("python3", "moto_server", "aws")))
struct EveryActionTests {
    /// Stands in for the distribution's package manager; the real one is exercised in containers,
    /// where upgrading packages cannot touch the host.
    func packageManagerShim(in dir: Scratch) throws -> String {
        let bin = dir.file("shim-bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        let script = try dir.write("shim-bin/apt-get", "#!/bin/sh\necho \"apt-get $*\" >> \(dir.file("apt-calls"))\n")
        chmod(script, 0o755)
        let mark = try dir.write("shim-bin/apt-mark", "#!/bin/sh\necho \"apt-mark $*\" >> \(dir.file("apt-calls"))\n")
        chmod(mark, 0o755)
        return bin
    }

    @Test("Every action runs, with AWSTOE's statuses and outputs")
    func everyAction() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let site = Scratch("kiln-site")
        defer { site.remove() }
        try site.write("payload.txt", "payload\n")
        let web = try LoopbackServer(
            executable: "python3", arguments: { ["-m", "http.server", "--bind", "127.0.0.1", String($0)] }, directory: site.path)
        defer { web.stop() }
        let s3 = try LoopbackServer(executable: "moto_server", arguments: { ["-H", "127.0.0.1", "-p", String($0)] })
        defer { s3.stop() }
        let environment = [
            "AWS_ACCESS_KEY_ID": "kiln", "AWS_SECRET_ACCESS_KEY": "kiln", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3.url,
        ]
        #expect(try shell("aws s3 mb s3://every-action", environment: environment).status == 0)
        let shim = try packageManagerShim(in: dir)
        let d = dir.path
        _ = try dir.write(
            "child.yaml",
            """
            schemaVersion: 1.0
            parameters:
              - Name:
                  type: string
            phases:
              - name: build
                steps:
                  - name: Hello
                    action: ExecuteBash
                    inputs:
                      commands: ['echo "child says {{ Name }}"']
            """)
        let document = try ComponentDocumentParser().parse(
            text: """
                name: EveryLinuxAction
                schemaVersion: 1.0
                phases:
                  - name: build
                    steps:
                      - {name: CreateFolder, action: CreateFolder, inputs: [{path: '\(d)/work', permissions: '0755'}]}
                      - {name: CreateFile, action: CreateFile, inputs: [{path: '\(d)/work/a.txt', content: 'alpha'}]}
                      - {name: AppendFile, action: AppendFile, inputs: [{path: '\(d)/work/a.txt', content: '-beta'}]}
                      - {name: ReadFile, action: ReadFile, inputs: [{path: '\(d)/work/a.txt'}]}
                      - {name: CopyFile, action: CopyFile, inputs: [{source: '\(d)/work/a.txt', destination: '\(d)/copy/'}]}
                      - {name: MoveFile, action: MoveFile, inputs: [{source: '\(d)/copy/a.txt', destination: '\(d)/copy/b.txt'}]}
                      - {name: CopyFolder, action: CopyFolder, inputs: [{source: '\(d)/copy', destination: '\(d)/copy2'}]}
                      - {name: MoveFolder, action: MoveFolder, inputs: [{source: '\(d)/copy2', destination: '\(d)/moved/'}]}
                      - {name: CreateSymlink, action: CreateSymlink, inputs: [{path: '\(d)/link', target: '\(d)/work/a.txt'}]}
                      - {name: ListFiles, action: ListFiles, inputs: [{path: '\(d)/moved', recursive: true}]}
                      - {name: SetFileEncoding, action: SetFileEncoding, inputs: [{path: '\(d)/copy/b.txt', encoding: utf-16-be}]}
                      - {name: SetFileOwner, action: SetFileOwner, inputs: [{path: '\(d)/work/a.txt', owner: root, group: root}]}
                      - {name: SetFolderOwner, action: SetFolderOwner, inputs: [{path: '\(d)/work', owner: '0'}]}
                      - {name: SetFilePermissions, action: SetFilePermissions, inputs: [{path: '\(d)/work/a.txt', permissions: '0600'}]}
                      - {name: SetFolderPermissions, action: SetFolderPermissions, inputs: [{path: '\(d)/moved', permissions: '0700'}]}
                      - {name: DeleteFile, action: DeleteFile, inputs: [{path: '\(d)/link'}]}
                      - {name: DeleteFolder, action: DeleteFolder, inputs: [{path: '\(d)/moved', force: true}]}
                      - {name: WebDownload, action: WebDownload, inputs: [{source: '\(web.url)/payload.txt', destination: '\(d)/dl/'}]}
                      - {name: S3Upload, action: S3Upload, inputs: [{source: '\(d)/dl/payload.txt', destination: 's3://every-action/p/payload.txt'}]}
                      - {name: S3Download, action: S3Download, inputs: [{source: 's3://every-action/p/payload.txt', destination: '\(d)/work/from-s3.txt'}]}
                      - name: ExecuteBash
                        action: ExecuteBash
                        inputs:
                          commands: ['cat \(d)/work/from-s3.txt']
                      - {name: ExecuteBinary, action: ExecuteBinary, inputs: {path: /bin/echo, arguments: ['{{ build.ReadFile.outputs.content }}']}}
                      - name: ExecuteDocument
                        action: ExecuteDocument
                        inputs:
                          document: \(d)/child.yaml
                          parameters:
                            - name: Name
                              value: kiln
                      - {name: UpdateOS, action: UpdateOS, inputs: {include: [openssl], exclude: [linux-image-amd64]}}
                      - {name: Reboot, action: Reboot, inputs: {delaySeconds: 0}}
                  - name: validate
                    steps:
                      - name: Assert
                        action: Assert
                        inputs:
                          stringEquals: payload
                          value: '{{ build.ExecuteBash.outputs.stdout }}'
                """, source: "every-action.yaml")

        var options = TOEOptions.forTests
        options.environment = environment
        let restarts = LineCollector()
        var path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        path = shim + ":" + path
        let session = ExecuteDocumentAndRebootTests.RestartingSession(
            inner: LocalHostSession(environment: ProcessInfo.processInfo.environment.merging(["PATH": path]) { _, new in new }),
            restarts: restarts)
        let console = LineCollector()
        let outcome = await TOERunner(session: session, options: options).run(
            TOERunRequest(documents: [TOEDocumentRun(document: document)]), log: try TOELogWriter(folder: nil, echo: { console.append($0) })
        )
        let result = RunResult(outcome: outcome, console: console)

        let linuxActions = Set(ActionCatalog.names(for: .linux))
        #expect(Set(result.steps.map(\.action)) == linuxActions, "the document covers every Linux action")
        #expect(result.report.status == .success, "\(console.text)")
        #expect(result.steps.allSatisfy { $0.status == .success })
        #expect(outcome.summary.executedStepCount == linuxActions.count)
        #expect(result.outputs("ReadFile") == ["content": "alpha-beta"])
        #expect(result.outputs("ListFiles") == ["files": "\(d)/moved/copy2/b.txt"])
        #expect(result.outputs("WebDownload") == ["destination": "\(d)/dl/payload.txt"])
        #expect(result.outputs("ExecuteBash") == ["stdout": "payload"])
        #expect(result.outputs("ExecuteBinary") == ["stdout": "alpha-beta"])
        #expect(result.outputs("ExecuteDocument")["status"] == "success")
        #expect(
            result.step("ExecuteDocument")?.detailedOutput?.first?.documents.first?.phases.first?.steps.first?.outputs
                == #"[{"stdout":"child says kiln"}]"#)
        #expect(result.step("CreateFile")?.outputs == "[]", "file actions have no outputs")
        #expect(restarts.all.count == 1)
        let aptCalls = try dir.read("apt-calls")
        #expect(aptCalls.contains("apt-get update"))
        #expect(aptCalls.contains("apt-mark hold linux-image-amd64"))
        #expect(aptCalls.contains("apt-get -y -o Dpkg::Options::=--force-confold install --only-upgrade openssl"))
        #expect(aptCalls.contains("apt-mark unhold linux-image-amd64"))
    }
}

@Suite("UpdateOS scripts")
struct UpdateOSScriptTests {
    @Test("Each package manager gets its own non-interactive commands, with include and exclude")
    func scripts() throws {
        let apt = try UpdateOSAction.script(for: .aptGet, include: [], exclude: [])
        #expect(apt.contains("apt-get update") && apt.contains("apt-get -y -o Dpkg::Options::=--force-confold upgrade"))
        #expect(
            try UpdateOSAction.script(for: .dnf, include: ["kernel"], exclude: ["nginx"]).contains(
                "dnf -y upgrade --exclude='nginx' 'kernel'"))
        #expect(try UpdateOSAction.script(for: .yum, include: [], exclude: []).contains("yum -y upgrade"))
        #expect(try UpdateOSAction.script(for: .zypper, include: ["a"], exclude: ["b"]).contains("zypper --non-interactive addlock 'b'"))
        #expect(try UpdateOSAction.script(for: .apk, include: ["musl"], exclude: []).contains("apk upgrade 'musl'"))
        #expect(throws: KilnError.self) { try UpdateOSAction.script(for: .apk, include: [], exclude: ["x"]) }
        #expect(try UpdateOSAction.script(for: .aptGet, include: ["it's"], exclude: []).contains(#"'it'\''s'"#), "names are shell-quoted")
    }
}
