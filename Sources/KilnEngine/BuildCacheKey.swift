import Foundation
import KilnModel
import KilnOCI

/// What decides a build's result, hashed: the parent's digest, the template, each component's
/// name, version, document bytes and parameters (in recipe order), the files COPY and ADD read,
/// and SOURCE_DATE_EPOCH. Equal keys mean a build can be skipped.
enum BuildCacheKey {
    static func key(
        parent: Digest, template: String, templateSteps: DockerfileTemplate, components: [ComponentConfiguration], definitions: Definitions,
        base: String, context: String, sourceDateEpoch: Int64?
    ) throws -> Digest {
        var text = "kiln-build-cache-v1\nparent \(parent)\nepoch \(sourceDateEpoch.map(String.init) ?? "-")\ntemplate \(Digest(sha256Of: Data(template.utf8)))\n"
        for configuration in components {
            guard let component = definitions.component(try ResourceReference(configuration.componentArn, resourceType: "component")) else { continue }
            let document: Data
            if let data = component.data {
                document = Data(data.utf8)
            } else if let uri = component.uri, let bytes = FileManager.default.contents(atPath: uri.hasPrefix("/") ? uri : base + "/" + uri) {
                document = bytes
            } else {
                document = Data()
            }
            let parameters = (configuration.parameters ?? []).sorted { $0.name < $1.name }.map { "\($0.name)=\($0.value.joined(separator: ","))" }.joined(separator: ";")
            text += "component \(component.name)/\(component.semanticVersion) \(Digest(sha256Of: document)) \(parameters)\n"
        }
        for step in templateSteps.steps {
            switch step.instruction {
            case .copy(let sources, _, _), .add(let sources, _, _):
                for source in sources { text += "context \(source) \(try contentDigest(context + "/" + source))\n" }
            default:
                break
            }
        }
        return Digest(sha256Of: Data(text.utf8))
    }

    /// A file's bytes and mode, or a folder's entries recursively, hashed.
    static func contentDigest(_ path: String) throws -> Digest {
        var text = ""
        func walk(_ path: String, _ relative: String) {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                text += "missing \(relative)\n"
                return
            }
            let mode = ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? NSNumber)?.intValue ?? 0
            if isDirectory.boolValue {
                text += "dir \(relative) \(mode)\n"
                for child in ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() { walk(path + "/" + child, relative + "/" + child) }
            } else {
                text += "file \(relative) \(mode) \(Digest(sha256Of: FileManager.default.contents(atPath: path) ?? Data()))\n"
            }
        }
        walk(path, ".")
        return Digest(sha256Of: Data(text.utf8))
    }
}
