import Foundation

/// Image Builder's resource name rule (botocore's `ResourceName`: letters, digits, `-`, `_`
/// and inner spaces, 3 to 128 characters). Names become folder names under the data
/// directory, so a name outside it (`../x`, `a/b`) is refused before anything uses it.
public enum ResourceName {
    public static func problem(_ name: String) -> String? {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
        let characters = Array(name)
        guard (3...128).contains(characters.count) else {
            return "name '\(name)' must be 3 to 128 characters long"
        }
        guard characters.allSatisfy({ allowed.contains($0) || $0 == " " }), characters.first != " ", characters.last != " " else {
            return "name '\(name)' may hold only letters, digits, '-', '_' and inner spaces (Image Builder's ResourceName pattern)"
        }
        return nil
    }
}

extension Definitions {
    /// Every resource name that breaks the rule, with where it is.
    public func resourceNameProblems() -> [String] {
        var problems: [String] = []
        func check(_ kind: String, _ names: [String]) {
            for (index, name) in names.enumerated() {
                if let problem = ResourceName.problem(name) { problems.append("\(kind)[\(index)]: \(problem)") }
            }
        }
        check("components", components.map(\.name))
        check("containerRecipes", containerRecipes.map(\.name))
        check("imageRecipes", imageRecipes.map(\.name))
        check("infrastructureConfigurations", infrastructureConfigurations.map(\.name))
        check("distributionConfigurations", distributionConfigurations.map(\.name))
        check("imagePipelines", imagePipelines.map(\.name))
        return problems
    }
}
