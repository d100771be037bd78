import Foundation
import Testing

@testable import KilnModel

/// Constructs that real, published component documents use and that must validate unchanged.
/// The fixtures are Kiln's own; they reproduce the shapes found in AWS's public samples.
@Suite("Constructs from public component documents")
struct PublicSampleConstructsTests {
    static let fixtures: [(String, String)] = [
        (
            "unquoted octal permissions and a chained destination",
            """
            name: Fetch and run an installer
            description: Downloads a script, marks it executable and runs it.
            schemaVersion: 1.0
            constants:
              - InstallerSource:
                  type: string
                  value: https://example.invalid/install.sh
            phases:
              - name: build
                steps:
                  - name: InstallerPath
                    action: ExecuteBash
                    inputs:
                      commands:
                        - echo "$HOME/install.sh"
                  - name: Download
                    action: WebDownload
                    inputs:
                      - source: '{{ InstallerSource }}'
                        destination: '{{ build.InstallerPath.outputs.stdout }}'
                  - name: MakeExecutable
                    action: SetFilePermissions
                    inputs:
                      - path: '{{ build.InstallerPath.outputs.stdout }}'
                        permissions: 0700
                  - name: Run
                    action: ExecuteBinary
                    inputs:
                      path: '{{ build.InstallerPath.outputs.stdout }}'
                      arguments:
                        - '-c'
                        - stable
                  - name: Cleanup
                    action: DeleteFile
                    inputs:
                      - path: '{{ build.InstallerPath.outputs.stdout }}'
            """
        ),
        (
            "DeleteFile with force, S3 placeholders, maxAttempts and unquoted chaining in a plain scalar",
            """
            name: Scan and report
            schemaVersion: 1.0
            phases:
              - name: test
                steps:
                  - name: Workspace
                    action: CreateFolder
                    onFailure: Abort
                    inputs:
                      - path: '/tmp/scan/'
                  - name: FetchTools
                    action: S3Download
                    inputs:
                      - source: s3://<enter_bucket_here>/<enter_prefix_here>/*
                        destination: /tmp/scan/
                  - name: Prepare
                    action: ExecuteBash
                    inputs:
                      commands:
                        - cd {{ test.FetchTools.inputs[0].destination }}
                        - chmod +x *
                  - name: Upload
                    action: S3Upload
                    maxAttempts: 3
                    inputs:
                      - source: /tmp/scan/reports/*
                        destination: s3://<REPORT_LOCATION>'
                  - name: Cleanup
                    action: DeleteFile
                    inputs:
                      - path: '/tmp/scan/'
                        force: true
            """
        ),
        (
            "four-space indentation, block scalars with quotes, heredocs and a constant in a script",
            """
            name: Web server
            description: Installs a web server.
            schemaVersion: 1.0

            constants:
              - fail:
                  type: string
                  value: '1'

            phases:
                - name: build
                  steps:
                    - name: Install
                      action: ExecuteBash
                      inputs:
                        commands:
                            - sudo yum install httpd -y
                            - |
                              sudo echo "<Directory \\"/var/www/html\\">
                                AllowOverride AuthConfig
                              </Directory>" > /etc/httpd/conf.d/site.conf
                            - |
                              mysql -u root << EOF
                              CREATE DATABASE site;
                              EOF
                    - name: Check
                      action: ExecuteBash
                      inputs:
                        commands:
                          - |
                            if [[ -f ~/marker ]]; then
                              echo 'ok'
                            else
                              exit {{ fail }}
                            fi
                - name: validate
                  steps:
                    - name: Probe
                      action: ExecuteBash
                      inputs:
                        commands:
                          - curl -s http://127.0.0.1 | grep "Hello"
            """
        ),
    ]

    @Test(arguments: fixtures)
    func validates(_ label: String, _ yaml: String) throws {
        let document = try ComponentDocumentParser().parse(text: yaml, source: "\(label).yaml")
        #expect(!document.phases.isEmpty)
    }

    /// Opt-in: point KILN_SAMPLES_DIR at a checkout of aws-samples/amazon-ec2-image-builder-samples
    /// to validate every Linux component document in it.
    @Test(
        "Every Linux component in a samples checkout validates",
        .enabled(if: ProcessInfo.processInfo.environment["KILN_SAMPLES_DIR"] != nil))
    func samplesCheckout() throws {
        let root = ProcessInfo.processInfo.environment["KILN_SAMPLES_DIR"]!
        let enumerator = FileManager.default.enumerator(atPath: root)
        var checked = 0
        while let relative = enumerator?.nextObject() as? String {
            guard relative.contains("Linux/"), relative.hasSuffix(".yml") || relative.hasSuffix(".yaml") else { continue }
            let path = root + "/" + relative
            let text = try String(contentsOfFile: path, encoding: .utf8)
            guard text.contains("\nphases:") else { continue }
            #expect(throws: Never.self, "\(relative)") { _ = try ComponentDocumentParser().parse(text: text, source: relative) }
            checked += 1
        }
        #expect(checked > 0)
    }
}

@Suite("Unknown actions")
struct UnknownActionTests {
    @Test("A misspelt action gets one problem with a suggestion, and chaining to that step is not reported again")
    func misspelling() throws {
        let yaml = """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Read
                    action: ReadFiles
                    inputs:
                      - path: /etc/hostname
                  - name: Check
                    action: Assert
                    inputs:
                      stringIsEmpty: '{{ build.Read.outputs.content }}'
            """
        let error = try #require(throws: KilnError.self) { try ComponentDocumentParser().parse(text: yaml, source: "typo.yaml") }
        #expect(error.issues.count == 1)
        #expect(error.issues.first?.message.contains("unknown action 'ReadFiles' (did you mean 'ReadFile'?)") == true)
        #expect(error.issues.first?.location == SourceLocation(file: "typo.yaml", line: 6, column: 17))
        #expect(ActionCatalog.closestName(to: "Xyzzy", platform: .linux) == nil, "no suggestion when nothing is close")
    }
}
