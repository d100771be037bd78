import Testing

@testable import KilnModel

// MARK: - Helpers

private let sourceName = "component.yml"

/// Parses `yaml` and returns the KilnError it throws, recording a failure if it does not throw one.
private func parseError(
    _ yaml: String, platform: ActionSpec.Platform = .linux, sourceLocation: Testing.SourceLocation = #_sourceLocation
) -> KilnError? {
    #expect(throws: KilnError.self, sourceLocation: sourceLocation) {
        try ComponentDocumentParser(platform: platform).parse(text: yaml, source: sourceName)
    }
}

private func parse(_ yaml: String, platform: ActionSpec.Platform = .linux) throws -> ComponentDocument {
    try ComponentDocumentParser(platform: platform).parse(text: yaml, source: sourceName)
}

/// The same condition with every comparison's source location removed, for structural comparison.
private func withoutLocations(_ condition: Condition) -> Condition {
    switch condition {
    case .and(let parts): return .and(parts.map(withoutLocations))
    case .or(let parts): return .or(parts.map(withoutLocations))
    case .not(let inner): return .not(withoutLocations(inner))
    case .comparison(var comparison):
        comparison.location = nil
        return .comparison(comparison)
    }
}

// MARK: - Malformed documents

/// One malformed document: the issue it must produce and where (1-based line and column).
struct MalformedCase: Sendable, CustomTestStringConvertible {
    var label: String
    var yaml: String
    var message: String
    var line: Int
    var column: Int
    var stepPath: String?
    var platform: ActionSpec.Platform = .linux

    init(
        _ label: String, _ yaml: String, _ message: String, line: Int, column: Int, stepPath: String? = nil,
        platform: ActionSpec.Platform = .linux
    ) {
        self.label = label
        self.yaml = yaml
        self.message = message
        self.line = line
        self.column = column
        self.stepPath = stepPath
        self.platform = platform
    }

    var testDescription: String { label }
}

let malformedCases: [MalformedCase] = [
    // MARK: YAML and document level
    MalformedCase(
        "YAML syntax error",
        """
        schemaVersion: 1.0
        phases:
          - name: build: x
        """,
        "YAML syntax error: mapping values are not allowed", line: 3, column: 16),
    MalformedCase(
        "empty document",
        "",
        "the document is empty", line: 1, column: 1),
    MalformedCase(
        "document is a list, not a mapping",
        """
        - schemaVersion
        - phases
        """,
        "the document must be a mapping (key: value pairs), found a list", line: 1, column: 1),
    MalformedCase(
        "missing schemaVersion",
        """
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "schemaVersion is required; add 'schemaVersion: 1.0'", line: 1, column: 1),
    MalformedCase(
        "unsupported schemaVersion",
        """
        schemaVersion: 2.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "schemaVersion '2.0' is not supported; use 1.0", line: 1, column: 16),
    MalformedCase(
        "unknown top-level key",
        """
        schemaVersion: 1.0
        author: someone
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "unknown top-level key 'author'", line: 2, column: 1),
    MalformedCase(
        "missing phases",
        """
        schemaVersion: 1.0
        name: NoPhases
        """,
        "phases is required", line: 1, column: 1),
    MalformedCase(
        "empty phases list",
        """
        schemaVersion: 1.0
        phases: []
        """,
        "phases must be a non-empty list", line: 2, column: 9),

    // MARK: Phases
    MalformedCase(
        "phase without a name",
        """
        schemaVersion: 1.0
        phases:
          - steps:
              - name: Step1
                action: Reboot
        """,
        "a phase needs a name", line: 3, column: 5),
    MalformedCase(
        "duplicate phase names",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
          - name: build
            steps:
              - name: Step2
                action: Reboot
        """,
        "phase 'build' appears more than once", line: 7, column: 5, stepPath: "build"),
    MalformedCase(
        "unknown phase key",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            stepz: []
            steps:
              - name: Step1
                action: Reboot
        """,
        "unknown key 'stepz' in phase; allowed: name, steps", line: 4, column: 5, stepPath: "build"),
    MalformedCase(
        "no build, validate or test phase",
        """
        schemaVersion: 1.0
        phases:
          - name: deploy
            steps:
              - name: Step1
                action: Reboot
        """,
        "needs at least one of the build, validate or test phases; found deploy", line: 3, column: 3),
    MalformedCase(
        "empty steps list",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps: []
        """,
        "steps must be a non-empty list", line: 4, column: 12, stepPath: "build"),

    // MARK: Steps
    MalformedCase(
        "step without a name",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - action: Reboot
        """,
        "a step needs a name", line: 5, column: 9, stepPath: "build"),
    MalformedCase(
        "step name with a dot",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step.1
                action: Reboot
        """,
        "step name 'Step.1' is invalid", line: 5, column: 15, stepPath: "build/Step.1"),
    MalformedCase(
        "duplicate step names",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
              - name: Step1
                action: Reboot
        """,
        "step name 'Step1' is used twice in phase 'build'", line: 7, column: 9, stepPath: "build/Step1"),
    MalformedCase(
        "unknown step key",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                timeout: 60
        """,
        "unknown step key 'timeout'", line: 7, column: 9, stepPath: "build/Step1"),
    MalformedCase(
        "missing action",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
        """,
        "step needs an action", line: 5, column: 9, stepPath: "build/Step1"),
    MalformedCase(
        "unknown action",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: RunScript
        """,
        "unknown action 'RunScript'", line: 6, column: 17, stepPath: "build/Step1"),
    MalformedCase(
        "action name in the wrong case",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: executeBash
                inputs:
                  commands:
                    - echo hi
        """,
        "action names are case-sensitive: did you mean 'ExecuteBash'?", line: 6, column: 17, stepPath: "build/Step1"),
    MalformedCase(
        "ExecutePowerShell on Linux",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecutePowerShell
                inputs:
                  commands:
                    - Write-Host hi
        """,
        "action 'ExecutePowerShell' runs only on windows, not on linux; use ExecuteBash", line: 6, column: 17,
        stepPath: "build/Step1"),
    MalformedCase(
        "InstallMSI on Linux",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Install
                action: InstallMSI
                inputs:
                  path: C:\\tmp\\setup.msi
        """,
        "action 'InstallMSI' runs only on windows, not on linux", line: 6, column: 17, stepPath: "build/Install"),
    MalformedCase(
        "SetRegistry on Linux",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Registry
                action: SetRegistry
                inputs:
                  - path: HKLM:\\SOFTWARE\\Kiln
                    name: Enabled
                    value: "1"
                    type: DWORD
        """,
        "action 'SetRegistry' runs only on windows, not on linux", line: 6, column: 17, stepPath: "build/Registry"),
    MalformedCase(
        "bad onFailure",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                onFailure: Retry
        """,
        "onFailure 'Retry' is invalid; allowed: Abort, Continue, Ignore", line: 7, column: 20, stepPath: "build/Step1"),
    MalformedCase(
        "timeoutSeconds 0",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                timeoutSeconds: 0
                inputs:
                  commands:
                    - echo hi
        """,
        "timeoutSeconds 0 is invalid", line: 7, column: 25, stepPath: "build/Step1"),
    MalformedCase(
        "timeoutSeconds -5",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                timeoutSeconds: -5
                inputs:
                  commands:
                    - echo hi
        """,
        "timeoutSeconds -5 is invalid; use a positive number of seconds, or -1 for no timeout", line: 7, column: 25,
        stepPath: "build/Step1"),
    MalformedCase(
        "timeoutSeconds not an integer",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                timeoutSeconds: ten
                inputs:
                  commands:
                    - echo hi
        """,
        "timeoutSeconds must be an integer, found 'ten'", line: 7, column: 25, stepPath: "build/Step1"),
    MalformedCase(
        "maxAttempts 0",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                maxAttempts: 0
                inputs:
                  commands:
                    - echo hi
        """,
        "maxAttempts 0 is invalid; use 1 or more", line: 7, column: 22, stepPath: "build/Step1"),
    MalformedCase(
        "ExecuteDocument with timeoutSeconds",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Nested
                action: ExecuteDocument
                timeoutSeconds: 60
                inputs:
                  document: other.yml
        """,
        "ExecuteDocument always runs with timeoutSeconds -1; remove timeoutSeconds", line: 7, column: 25,
        stepPath: "build/Nested"),
    MalformedCase(
        "ExecuteDocument with maxAttempts",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Nested
                action: ExecuteDocument
                maxAttempts: 3
                inputs:
                  document: other.yml
        """,
        "ExecuteDocument always runs with maxAttempts 1; remove maxAttempts", line: 7, column: 22,
        stepPath: "build/Nested"),

    // MARK: Inputs
    MalformedCase(
        "ExecuteBash without inputs",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
        """,
        "ExecuteBash needs inputs (a mapping with commands)", line: 5, column: 9, stepPath: "build/Step1"),
    MalformedCase(
        "Assert without inputs",
        """
        schemaVersion: 1.0
        phases:
          - name: test
            steps:
              - name: Check
                action: Assert
        """,
        "Assert needs inputs: one comparison or logical operator", line: 5, column: 9, stepPath: "test/Check"),
    MalformedCase(
        "unknown input key",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                inputs:
                  commands:
                    - echo hi
                  shell: bash
        """,
        "unknown input 'shell' for ExecuteBash; allowed: commands", line: 10, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "CreateSymlink without target",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Link
                action: CreateSymlink
                inputs:
                  - path: /tmp/link
        """,
        "CreateSymlink input 'target' is required", line: 8, column: 13, stepPath: "build/Link"),
    MalformedCase(
        "list-form action given a mapping",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Folder
                action: CreateFolder
                inputs:
                  path: /tmp/x
        """,
        "CreateFolder inputs must be a list of mappings; put '- ' before the first key", line: 8, column: 11,
        stepPath: "build/Folder"),
    MalformedCase(
        "list-form action given an empty list",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Folder
                action: CreateFolder
                inputs: []
        """,
        "CreateFolder inputs list is empty", line: 7, column: 17, stepPath: "build/Folder"),
    MalformedCase(
        "boolean input 'yes'",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Folder
                action: CreateFolder
                inputs:
                  - path: /tmp/x
                    overwrite: yes
        """,
        "CreateFolder input 'overwrite' must be true or false, found 'yes'", line: 9, column: 24,
        stepPath: "build/Folder"),
    MalformedCase(
        "integer input that is not an integer",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Restart
                action: Reboot
                inputs:
                  delaySeconds: soon
        """,
        "Reboot input 'delaySeconds' must be an integer, found 'soon'", line: 8, column: 25, stepPath: "build/Restart"),
    MalformedCase(
        "commands not a list",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                inputs:
                  commands: echo hi
        """,
        "ExecuteBash input 'commands' must be a list of strings", line: 8, column: 21, stepPath: "build/Step1"),
    MalformedCase(
        "unquoted '- {{ X }}' list item",
        """
        schemaVersion: 1.0
        parameters:
          - Message:
              type: string
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                inputs:
                  commands:
                    - {{ Message }}
        """,
        "an item of ExecuteBash input 'commands' must be a string, found a mapping; a value starting with '{{' must be quoted",
        line: 12, column: 15, stepPath: "build/Step1"),

    // MARK: Loops
    MalformedCase(
        "loop with both for and forEach",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  for:
                    start: 1
                    end: 3
                  forEach:
                    - a
        """,
        "loop may have only one of 'for' and 'forEach'", line: 8, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "loop with neither for nor forEach",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  name: myLoop
        """,
        "loop needs 'for' or 'forEach'", line: 8, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "unknown loop key",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  count: 3
                  forEach:
                    - a
        """,
        "unknown loop key 'count'", line: 8, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "loop updateBy 0",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  for:
                    start: 1
                    end: 5
                    updateBy: 0
        """,
        "loop updateBy must not be 0", line: 9, column: 13, stepPath: "build/Step1"),
    MalformedCase(
        "loop that never ends",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  for:
                    start: 1
                    end: 5
                    updateBy: -1
        """,
        "loop from 1 to 5 by -1 never reaches its end; use updateBy 1", line: 9, column: 13, stepPath: "build/Step1"),
    MalformedCase(
        "loop start from a variable",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  for:
                    start: '{{ First }}'
                    end: 5
        """,
        "loop start cannot use variables or chaining", line: 9, column: 20, stepPath: "build/Step1"),
    MalformedCase(
        "bad loop delimiter",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  forEach:
                    list: a|b
                    delimiter: '|'
        """,
        "loop delimiter '|' is invalid", line: 10, column: 24, stepPath: "build/Step1"),
    MalformedCase(
        "loop named 'loop'",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  name: loop
                  forEach:
                    - a
        """,
        "loop name 'loop' is invalid", line: 8, column: 17, stepPath: "build/Step1"),
    MalformedCase(
        "duplicate loop names in a phase",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  name: items
                  forEach:
                    - a
              - name: Step2
                action: Reboot
                loop:
                  name: items
                  forEach:
                    - b
        """,
        "loop name 'items' is used twice in phase 'build'", line: 11, column: 9, stepPath: "build/Step2"),

    // MARK: Conditions
    MalformedCase(
        "if with two operators",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  stringEquals: a
                  stringIsEmpty: b
                  value: a
        """,
        "condition has 2 operators (stringEquals, stringIsEmpty)", line: 8, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "if with an unknown operator",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  contains: abc
                  value: xabcx
        """,
        "unknown key 'contains' in condition", line: 8, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "if then: Maybe",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  fileExists: /tmp/x
                  then: Maybe
        """,
        "if then 'Maybe' is invalid; allowed: Abort, Execute, Skip", line: 9, column: 17, stepPath: "build/Step1"),
    MalformedCase(
        "stringEquals without value",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  stringEquals: abc
        """,
        "stringEquals needs 'value:' beside it", line: 8, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "fileSHA256Equals given value instead of path",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  fileSHA256Equals: abc123
                  value: /tmp/x
        """,
        "fileSHA256Equals needs 'path:' beside it", line: 8, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "fileExists given a value",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  fileExists: /tmp/x
                  value: y
        """,
        "fileExists takes no 'value'", line: 9, column: 11, stepPath: "build/Step1"),
    MalformedCase(
        "and with an empty list",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  and: []
        """,
        "'and' needs a non-empty list of conditions", line: 8, column: 16, stepPath: "build/Step1"),
    MalformedCase(
        "or with an empty list",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  or: []
        """,
        "'or' needs a non-empty list of conditions", line: 8, column: 15, stepPath: "build/Step1"),
    MalformedCase(
        "bad comparison nested in not",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                if:
                  not:
                    stringEquals: a
        """,
        "stringEquals needs 'value:' beside it", line: 9, column: 13, stepPath: "build/Step1"),

    // MARK: Variables and chaining
    MalformedCase(
        "undefined variable",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                inputs:
                  commands:
                    - echo {{ Name }}
        """,
        "{{ Name }} names no parameter or constant (the document defines none)", line: 5, column: 9,
        stepPath: "build/Step1"),
    MalformedCase(
        "variable name in the wrong case",
        """
        schemaVersion: 1.0
        parameters:
          - Version:
              type: string
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                inputs:
                  commands:
                    - echo {{ version }}
        """,
        "{{ version }} names no parameter or constant (defined: Version); names are case-sensitive", line: 8, column: 9,
        stepPath: "build/Step1"),
    MalformedCase(
        "undefined variable in a loop list",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
                loop:
                  forEach:
                    - '{{ Missing }}'
        """,
        "{{ Missing }} names no parameter or constant", line: 5, column: 9, stepPath: "build/Step1"),
    MalformedCase(
        "chaining to a later step",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                inputs:
                  commands:
                    - echo {{ build.Step2.outputs.stdout }}
              - name: Step2
                action: ExecuteBash
                inputs:
                  commands:
                    - echo two
        """,
        "{{ build.Step2.outputs.stdout }} refers to 'build/Step2', which has not run yet at this step", line: 5,
        column: 9, stepPath: "build/Step1"),
    MalformedCase(
        "chaining to a missing step",
        """
        schemaVersion: 1.0
        phases:
          - name: build
            steps:
              - name: Step1
                action: ExecuteBash
                inputs:
                  commands:
                    - echo one
              - name: Step2
                action: ExecuteBash
                inputs:
                  commands:
                    - echo {{ build.Nope.outputs.stdout }}
        """,
        "{{ build.Nope.outputs.stdout }} refers to step 'Nope', which phase 'build' does not have", line: 10,
        column: 9, stepPath: "build/Step2"),

    // MARK: Parameters and constants
    MalformedCase(
        "parameter name too short",
        """
        schemaVersion: 1.0
        parameters:
          - ab:
              type: string
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "parameter name 'ab' is invalid; use 3–128 characters", line: 3, column: 5),
    MalformedCase(
        "parameter of type integer",
        """
        schemaVersion: 1.0
        parameters:
          - Count:
              type: integer
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "parameter 'Count' has type 'integer'; the only supported type is string", line: 4, column: 13),
    MalformedCase(
        "parameter without a type",
        """
        schemaVersion: 1.0
        parameters:
          - Version:
              default: "1.0"
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "parameter 'Version' needs 'type: string'", line: 3, column: 5),
    MalformedCase(
        "unknown parameter key",
        """
        schemaVersion: 1.0
        parameters:
          - Version:
              type: string
              required: true
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "unknown key 'required' in parameter 'Version'; allowed: type, default, description", line: 5, column: 7),
    MalformedCase(
        "parameter and constant with the same name",
        """
        schemaVersion: 1.0
        parameters:
          - Version:
              type: string
        constants:
          - Version:
              type: string
              value: "1.2"
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        // The parser points at the first definition of the name.
        "'Version' is defined more than once; parameter and constant names must be unique together", line: 3,
        column: 5),
    MalformedCase(
        "constant without a value",
        """
        schemaVersion: 1.0
        constants:
          - Greeting:
              type: string
        phases:
          - name: build
            steps:
              - name: Step1
                action: Reboot
        """,
        "constant 'Greeting' needs a value", line: 3, column: 5),
]

@Suite("ComponentDocumentParser rejects malformed documents")
struct MalformedDocumentTests {
    @Test("reports the expected issue at the expected place", arguments: malformedCases)
    func reportsIssue(_ testCase: MalformedCase) throws {
        let error = try #require(parseError(testCase.yaml, platform: testCase.platform))
        #expect(error.code == .invalidDocument)
        #expect(!error.issues.isEmpty)
        let issue = try #require(
            error.issues.first { $0.message.contains(testCase.message) },
            "no issue mentions \"\(testCase.message)\"; issues:\n\(error.issues.map(\.description).joined(separator: "\n"))"
        )
        #expect(issue.location.file == sourceName)
        #expect(issue.location.line == testCase.line, "\(issue)")
        #expect(issue.location.column == testCase.column, "\(issue)")
        #expect(issue.stepPath == testCase.stepPath, "\(issue)")
    }

    @Test func caseCountIsLargeEnough() {
        #expect(malformedCases.count >= 35)
        #expect(Set(malformedCases.map(\.label)).count == malformedCases.count)
    }
}

// MARK: - Valid documents

@Suite("ComponentDocumentParser accepts valid documents")
struct ValidDocumentTests {
    @Test func stepDefaultsAndOverrides() throws {
        let document = try parse(
            """
            name: Defaults
            description: Step defaults
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Plain
                    action: ExecuteBash
                    inputs:
                      commands:
                        - echo plain
                  - name: ExplicitTimeout
                    action: ExecuteBash
                    timeoutSeconds: 7200
                    inputs:
                      commands:
                        - echo explicit
                  - name: NoTimeout
                    action: ExecuteBash
                    timeoutSeconds: -1
                    onFailure: Continue
                    maxAttempts: 3
                    inputs:
                      commands:
                        - echo none
                  - name: Ignored
                    action: ExecuteBash
                    onFailure: Ignore
                    timeoutSeconds: 30
                    inputs:
                      commands:
                        - echo ignored
            """)
        #expect(document.name == "Defaults")
        #expect(document.description == "Step defaults")
        #expect(document.schemaVersion == "1.0")
        #expect(document.source == sourceName)
        let steps = try #require(document.phase(named: "build")).steps
        #expect(steps.map(\.name) == ["Plain", "ExplicitTimeout", "NoTimeout", "Ignored"])

        #expect(steps[0].timeoutSeconds == Step.defaultTimeoutSeconds)
        #expect(steps[0].timeoutSeconds == 7200)
        #expect(steps[0].onFailure == .abort)
        #expect(steps[0].maxAttempts == 1)
        #expect(steps[0].action == "ExecuteBash")
        #expect(steps[0].inputs?["commands"] == .list([.string("echo plain")]))
        #expect(steps[0].location == KilnModel.SourceLocation(file: sourceName, line: 7, column: 9))

        #expect(steps[1].timeoutSeconds == 7200)

        #expect(steps[2].timeoutSeconds == nil)
        #expect(steps[2].timeoutSecondsForLog == -1)
        #expect(steps[2].onFailure == .continue)
        #expect(steps[2].maxAttempts == 3)

        #expect(steps[3].onFailure == .ignore)
        #expect(steps[3].timeoutSeconds == 30)
    }

    @Test func schemaVersionOneIsNormalised() throws {
        let document = try parse(
            """
            schemaVersion: 1
            phases:
              - name: build
                steps:
                  - name: Restart
                    action: Reboot
            """)
        #expect(document.schemaVersion == "1.0")
        // Reboot and ExecuteDocument never time out.
        #expect(document.phases[0].steps[0].timeoutSeconds == nil)
    }

    @Test func executeDocumentRunsWithoutTimeout() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Nested
                    action: ExecuteDocument
                    timeoutSeconds: -1
                    maxAttempts: 1
                    inputs:
                      document: other.yml
                      parameters:
                        - name: Greeting
                          value: hello
            """)
        let step = document.phases[0].steps[0]
        #expect(step.timeoutSeconds == nil)
        #expect(step.maxAttempts == 1)
        #expect(step.inputs?["document"] == .string("other.yml"))
    }

    @Test func parametersAndConstants() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            parameters:
              - Version:
                  type: string
                  default: "2.1"
                  description: The version to install.
              - Target_dir:
                  type: string
            constants:
              - Greeting:
                  type: string
                  value: hello world
            phases:
              - name: build
                steps:
                  - name: Say
                    action: ExecuteBash
                    inputs:
                      commands:
                        - echo "{{ Greeting }} {{ Version }} {{Target_dir}}"
            """)
        #expect(
            document.parameters == [
                ParameterDefinition(name: "Version", type: "string", defaultValue: "2.1", description: "The version to install."),
                ParameterDefinition(name: "Target_dir", type: "string"),
            ])
        #expect(document.constants == [ConstantDefinition(name: "Greeting", type: "string", value: "hello world")])
    }

    @Test func allFourPhasesKeptInOrder() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: validate
                steps:
                  - name: V
                    action: Reboot
              - name: build
                steps:
                  - name: B
                    action: Reboot
              - name: container-host-test
                steps:
                  - name: C
                    action: Reboot
              - name: test
                steps:
                  - name: T
                    action: Reboot
            """)
        #expect(document.phases.map(\.name) == ["validate", "build", "container-host-test", "test"])
        #expect(document.phases.map { $0.steps.map(\.name) } == [["V"], ["B"], ["C"], ["T"]])
        #expect(document.phases[1].location.line == 7)
        #expect(document.phases[1].location.column == 5)
        #expect(document.componentType == "BUILD")
    }

    @Test func testOnlyDocumentIsATestComponent() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: test
                steps:
                  - name: T
                    action: Reboot
            """)
        #expect(document.componentType == "TEST")
    }

    @Test func loopsOfAllForms() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Range
                    action: ExecuteBash
                    loop:
                      name: counter
                      for:
                        start: 1
                        end: 3
                    inputs:
                      commands:
                        - echo {{ counter.index }} {{ counter.value }}
                  - name: Down
                    action: ExecuteBash
                    loop:
                      for:
                        start: 10
                        end: 0
                        updateBy: -5
                    inputs:
                      commands:
                        - echo {{ loop.value }}
                  - name: List
                    action: ExecuteBash
                    loop:
                      forEach:
                        - alpha
                        - beta
                    inputs:
                      commands:
                        - echo {{ loop.value }}
                  - name: Commas
                    action: ExecuteBash
                    loop:
                      forEach:
                        list: a,b,c
                    inputs:
                      commands:
                        - echo {{ loop.value }}
                  - name: Semicolons
                    action: ExecuteBash
                    loop:
                      name: parts
                      forEach:
                        list: a;b;c
                        delimiter: ;
                    inputs:
                      commands:
                        - echo {{ parts.value }}
            """)
        let steps = document.phases[0].steps
        #expect(steps[0].loop == StepLoop(name: "counter", kind: .range(start: 1, end: 3, updateBy: 1)))
        #expect(steps[1].loop == StepLoop(name: nil, kind: .range(start: 10, end: 0, updateBy: -5)))
        #expect(steps[2].loop == StepLoop(kind: .list(["alpha", "beta"])))
        #expect(steps[3].loop == StepLoop(kind: .delimited(list: "a,b,c", delimiter: ",")))
        #expect(steps[4].loop == StepLoop(name: "parts", kind: .delimited(list: "a;b;c", delimiter: ";")))
    }

    @Test func nestedConditions() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            parameters:
              - Version:
                  type: string
                  default: "1"
            phases:
              - name: build
                steps:
                  - name: Guarded
                    action: Reboot
                    if:
                      and:
                        - stringEquals: "1"
                          value: '{{ Version }}'
                        - or:
                            - fileExists: /tmp/marker
                            - not:
                                binaryExists: git
                            - fileSHA256Equals: abc123
                              path: /tmp/file
                      then: Execute
                      else: Abort
                  - name: Simple
                    action: Reboot
                    if:
                      stringIsEmpty: ""
            """)
        let steps = document.phases[0].steps
        let guarded = try #require(steps[0].condition)
        #expect(guarded.then == .execute)
        #expect(guarded.otherwise == .abort)
        #expect(
            withoutLocations(guarded.expression)
                == .and([
                    .comparison(Comparison(op: .stringEquals, operand: "1", subject: "{{ Version }}")),
                    .or([
                        .comparison(Comparison(op: .fileExists, operand: "/tmp/marker")),
                        .not(.comparison(Comparison(op: .binaryExists, operand: "git"))),
                        .comparison(Comparison(op: .fileSHA256Equals, operand: "abc123", subject: "/tmp/file")),
                    ]),
                ]))
        if case .and(let parts) = guarded.expression, case .comparison(let first) = parts.first {
            #expect(first.location == KilnModel.SourceLocation(file: sourceName, line: 13, column: 15))
        } else {
            Issue.record("expected an 'and' whose first part is a comparison")
        }

        let simple = try #require(steps[1].condition)
        #expect(simple.then == .execute)
        #expect(simple.otherwise == .skip)
        #expect(withoutLocations(simple.expression) == .comparison(Comparison(op: .stringIsEmpty, operand: "")))
    }

    @Test func assertStepHasAssertion() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: test
                steps:
                  - name: Check
                    action: Assert
                    inputs:
                      numberGreaterThanEquals: "3"
                      value: "5"
            """)
        let step = document.phases[0].steps[0]
        let assertion = try #require(step.assertion)
        #expect(withoutLocations(assertion) == .comparison(Comparison(op: .numberGreaterThanEquals, operand: "3", subject: "5")))
        #expect(step.inputs?["value"] == .string("5"))
    }

    @Test func permissionsStayStrings() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Folder
                    action: CreateFolder
                    inputs:
                      - path: /tmp/kiln
                        permissions: 0700
                        overwrite: true
            """)
        let inputs = try #require(document.phases[0].steps[0].inputs)
        let first = try #require(inputs.listValue?.first)
        #expect(first["permissions"] == .string("0700"))
        #expect(first["permissions"]?.stringValue == "0700")
        #expect(first["overwrite"] == .string("true"))
        #expect(first["path"] == .string("/tmp/kiln"))
    }

    @Test func chainingToAnEarlierStep() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: First
                    action: ExecuteBash
                    inputs:
                      commands:
                        - echo one
                  - name: Second
                    action: ExecuteBash
                    inputs:
                      commands:
                        - echo "{{ build.First.outputs.stdout }} {{ build.First.inputs[0].commands }}"
            """)
        #expect(document.phases[0].steps.count == 2)
    }

    @Test func windowsActionsAcceptedOnWindows() throws {
        let document = try parse(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Hello
                    action: ExecutePowerShell
                    inputs:
                      commands:
                        - Write-Host hello
            """, platform: .windows)
        #expect(document.phases[0].steps[0].action == "ExecutePowerShell")
    }

    @Test func severalProblemsAreReportedTogether() throws {
        let error = try #require(
            parseError(
                """
                schemaVersion: 3.0
                owner: nobody
                phases:
                  - name: build
                    steps:
                      - name: Step1
                        action: ExecuteBash
                        onFailure: Sometimes
                        maxAttempts: 0
                        inputs:
                          commands:
                            - echo {{ Undefined }}
                      - name: Step2
                        action: DoMagic
                """))
        #expect(error.code == .invalidDocument)
        #expect(error.issues.count >= 3)
        #expect(error.message.contains("\(error.issues.count) problems found"))
        let messages = error.issues.map(\.message)
        for expected in [
            "schemaVersion '3.0'", "unknown top-level key 'owner'", "onFailure 'Sometimes'",
            "maxAttempts 0", "{{ Undefined }}", "unknown action 'DoMagic'",
        ] {
            #expect(messages.contains { $0.contains(expected) }, "missing: \(expected)")
        }
    }
}

// MARK: - Template expressions

@Suite("TemplateExpression")
struct TemplateExpressionTests {
    @Test(arguments: [
        ("{{ Name }}", TemplateReference.variable("Name")),
        ("{{Name}}", .variable("Name")),
        ("{{ loop.index }}", .loop(name: "loop", field: "index")),
        ("{{ myLoop.value }}", .loop(name: "myLoop", field: "value")),
        ("{{ build.Step.outputs.stdout }}", .chained(phase: "build", step: "Step", part: .outputs, key: "stdout")),
        ("{{ build.Step.inputs[1].source }}", .chained(phase: "build", step: "Step", part: .inputs(index: 1), key: "source")),
        ("{{ build.Step.inputs.source }}", .chained(phase: "build", step: "Step", part: .inputs(index: nil), key: "source")),
        ("{{ .Id }}", .other),
        ("{{ a.b.c }}", .other),
        ("{{ has space }}", .other),
    ])
    func scanSingleExpression(text: String, reference: TemplateReference) throws {
        let found = TemplateExpression.scan(text)
        try #require(found.count == 1)
        #expect(found[0].expression.text == text)
        #expect(found[0].range == text.startIndex..<text.endIndex)
        #expect(found[0].expression.reference == reference)
    }

    @Test func bodyIsTrimmed() throws {
        let found = TemplateExpression.scan("{{   Name  }}")
        try #require(found.count == 1)
        #expect(found[0].expression.body == "Name")
        #expect(TemplateExpression.scan("{{Name}}").first?.expression.body == "Name")
    }

    @Test func classifyDirectly() {
        #expect(TemplateExpression.classify("Name") == .variable("Name"))
        #expect(TemplateExpression.classify("loop.index") == .loop(name: "loop", field: "index"))
        #expect(
            TemplateExpression.classify("build.Step.outputs.stdout")
                == .chained(phase: "build", step: "Step", part: .outputs, key: "stdout"))
        #expect(
            TemplateExpression.classify("build.Step.inputs[1].source")
                == .chained(phase: "build", step: "Step", part: .inputs(index: 1), key: "source"))
        #expect(TemplateExpression.classify(".Id") == .other)
        #expect(TemplateExpression.classify("build.Step.inputs[-1].source") == .other)
    }

    @Test func twoExpressionsInOneString() throws {
        let text = "echo {{ Greeting }} from {{ build.Setup.outputs.stdout }}!"
        let found = TemplateExpression.scan(text)
        try #require(found.count == 2)
        #expect(found.map(\.expression.text) == ["{{ Greeting }}", "{{ build.Setup.outputs.stdout }}"])
        #expect(String(text[found[0].range]) == "{{ Greeting }}")
        #expect(String(text[found[1].range]) == "{{ build.Setup.outputs.stdout }}")
        #expect(found[0].expression.reference == .variable("Greeting"))
        #expect(found[1].expression.reference == .chained(phase: "build", step: "Setup", part: .outputs, key: "stdout"))
    }

    @Test func noExpressions() {
        #expect(TemplateExpression.scan("plain text").isEmpty)
        #expect(TemplateExpression.scan("{{ unterminated").isEmpty)
    }
}
