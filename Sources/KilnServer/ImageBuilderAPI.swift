import Crypto
import Foundation
import KilnModel
import KilnStore

/// The Image Builder operations Kiln implements, over the store. Inputs arrive validated
/// against botocore's model (`APIRequestDecoder`); outputs are trimmed to the model's output
/// shapes by the caller. Each operation lives in `ResourceOperations.swift` or
/// `ImageOperations.swift`.
final class ImageBuilderAPI: Sendable {
    typealias Object = [String: JSONValue]

    let configuration: KilnConfiguration
    let store: SQLiteStore
    let builds: BuildScheduler
    let pipelineChanges = PipelineChangeSignal()

    init(configuration: KilnConfiguration, store: SQLiteStore, builds: BuildScheduler) {
        self.configuration = configuration
        self.store = store
        self.builds = builds
    }

    /// Runs one operation; a `clientToken` replays the first answer to the same request and
    /// refuses a different request under the same token, as Image Builder does.
    func perform(_ operation: String, _ input: Object, requestId: String) async throws -> Object {
        guard let token = input["clientToken"]?.string else {
            return try await dispatch(operation, input, requestId: requestId)
        }
        var request = input
        request["clientToken"] = nil
        let digest = SHA256.hash(data: JSONValue.object(request).encoded()).map { String(format: "%02x", $0) }.joined()
        if let earlier = try store.idempotentResponse(operation: operation, token: token) {
            guard earlier.requestDigest == digest else {
                throw apiError(
                    "IdempotentParameterMismatchException",
                    "clientToken '\(token)' was used for a different \(operation) request; use a new token for a new request")
            }
            if case .object(var replay) = try JSONValue(parsing: earlier.response) {
                replay["requestId"] = .string(requestId)
                return replay
            }
        }
        var output = try await dispatch(operation, input, requestId: requestId)
        output["clientToken"] = .string(token)
        try store.saveIdempotentResponse(
            operation: operation, token: token, requestDigest: digest, response: JSONValue.object(output).encodedData())
        return output
    }

    private func dispatch(_ operation: String, _ input: Object, requestId: String) async throws -> Object {
        var output: Object
        switch operation {
        case "CreateComponent": output = try await createComponent(input)
        case "ImportComponent": output = try await importComponent(input)
        case "GetComponent": output = try getComponent(input)
        case "ListComponents": output = try listComponents(input)
        case "ListComponentBuildVersions": output = try listComponentBuildVersions(input)
        case "DeleteComponent": output = try deleteComponent(input)
        case "CreateImageRecipe": output = try createRecipe(input, kind: .imageRecipe)
        case "CreateContainerRecipe": output = try createRecipe(input, kind: .containerRecipe)
        case "GetImageRecipe": output = try getResource(input, kind: .imageRecipe)
        case "GetContainerRecipe": output = try getResource(input, kind: .containerRecipe)
        case "ListImageRecipes": output = try listResources(input, kind: .imageRecipe)
        case "ListContainerRecipes": output = try listResources(input, kind: .containerRecipe)
        case "DeleteImageRecipe": output = try deleteResource(input, kind: .imageRecipe)
        case "DeleteContainerRecipe": output = try deleteResource(input, kind: .containerRecipe)
        case "CreateInfrastructureConfiguration": output = try createConfiguration(input, kind: .infrastructureConfiguration)
        case "CreateDistributionConfiguration": output = try createConfiguration(input, kind: .distributionConfiguration)
        case "CreateImagePipeline": output = try createConfiguration(input, kind: .imagePipeline)
        case "UpdateInfrastructureConfiguration": output = try updateConfiguration(input, kind: .infrastructureConfiguration)
        case "UpdateDistributionConfiguration": output = try updateConfiguration(input, kind: .distributionConfiguration)
        case "UpdateImagePipeline": output = try updateConfiguration(input, kind: .imagePipeline)
        case "GetInfrastructureConfiguration": output = try getResource(input, kind: .infrastructureConfiguration)
        case "GetDistributionConfiguration": output = try getResource(input, kind: .distributionConfiguration)
        case "GetImagePipeline": output = try getResource(input, kind: .imagePipeline)
        case "ListInfrastructureConfigurations": output = try listResources(input, kind: .infrastructureConfiguration)
        case "ListDistributionConfigurations": output = try listResources(input, kind: .distributionConfiguration)
        case "ListImagePipelines": output = try listResources(input, kind: .imagePipeline)
        case "DeleteInfrastructureConfiguration": output = try deleteResource(input, kind: .infrastructureConfiguration)
        case "DeleteDistributionConfiguration": output = try deleteResource(input, kind: .distributionConfiguration)
        case "DeleteImagePipeline": output = try deleteResource(input, kind: .imagePipeline)
        case "StartImagePipelineExecution": output = try startPipeline(input)
        case "CreateImage": output = try createImage(input)
        case "ImportDiskImage": output = try importDiskImage(input)
        case "GetImage": output = try getImage(input)
        case "ListImages": output = try listImages(input)
        case "ListImageBuildVersions": output = try listImageBuildVersions(input)
        case "ListImagePipelineImages": output = try listImagePipelineImages(input)
        case "ListImagePackages": output = try listImagePackages(input)
        case "DeleteImage": output = try deleteImage(input)
        case "CancelImageCreation": output = try await cancelImage(input)
        case "RetryImage": output = try retryImage(input)
        case "GetWorkflowExecution": output = try getWorkflowExecution(input)
        case "ListWorkflowExecutions": output = try listWorkflowExecutions(input)
        case "ListWorkflowStepExecutions": output = try listWorkflowStepExecutions(input)
        case "GetWorkflowStepExecution": output = try getWorkflowStepExecution(input)
        case "TagResource": output = try tagResource(input)
        case "UntagResource": output = try untagResource(input)
        case "ListTagsForResource": output = try listTags(input)
        default:
            throw apiError(
                "InvalidRequestException",
                "Kiln does not support \(operation) yet; the operations it answers are listed in the README (kiln server)")
        }
        output["requestId"] = .string(requestId)
        return output
    }

    // MARK: Shared helpers

    var now: String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }

    func arn(_ kind: String, _ name: String, _ version: String? = nil) -> String {
        ImageBuilderARN(
            region: configuration.homeRegion, account: configuration.accountId, resourceType: kind, name: name, version: version
        )
        .description
    }

    /// A required string member (the decoder checked presence; this reads it).
    func string(_ input: Object, _ member: String) throws -> String {
        guard let value = input[member]?.string else { throw apiError("InvalidRequestException", "\(member) is required") }
        return value
    }

    func semanticVersion(_ input: Object, _ member: String = "semanticVersion") throws -> SemanticVersion {
        let text = try string(input, member)
        do {
            return try SemanticVersion(parsing: text)
        } catch let error as KilnError {
            throw apiError("InvalidVersionNumberException", "\(member): \(error.message)")
        }
    }

    /// An Image Builder ARN of `kind` in this account and home region, from member `member`.
    func parseARN(_ text: String, kind: String, member: String) throws -> ImageBuilderARN {
        let arn: ImageBuilderARN
        do {
            arn = try ImageBuilderARN(parsing: text)
        } catch let error as KilnError {
            throw apiError("InvalidParameterValueException", "\(member): \(error.message)")
        }
        guard arn.resourceType == kind else {
            throw apiError("InvalidParameterValueException", "\(member): \(text) is a \(arn.resourceType) ARN; give a \(kind) ARN")
        }
        return arn
    }

    /// `maxResults` and `nextToken` as an offset and a limit.
    func page(_ input: Object) throws -> (offset: Int, limit: Int) {
        let limit = input["maxResults"]?.int ?? 25
        guard let token = input["nextToken"]?.string else { return (0, limit) }
        guard let data = Data(base64Encoded: token), let text = String(data: data, encoding: .utf8), text.hasPrefix("offset:"),
            let offset = Int(text.dropFirst(7)), offset >= 0
        else {
            throw apiError("InvalidPaginationTokenException", "nextToken '\(token)' is not one Kiln gave; start the list again without it")
        }
        return (offset, limit)
    }

    func nextToken(_ next: Int?) -> JSONValue? {
        next.map { .string(Data("offset:\($0)".utf8).base64EncodedString()) }
    }

    /// A list sliced to one page, with the token of the next.
    func paged<T>(_ items: [T], _ input: Object) throws -> (items: ArraySlice<T>, next: JSONValue?) {
        let (offset, limit) = try page(input)
        let slice = items.dropFirst(offset).prefix(limit)
        return (slice, offset + limit < items.count ? nextToken(offset + limit) : nil)
    }

    /// `filters` as name → allowed values; a name outside `allowed` is refused, naming them.
    func filters(_ input: Object, allowed: [String]) throws -> [String: [String]] {
        var result: [String: [String]] = [:]
        for filter in input["filters"]?.array ?? [] {
            guard let name = filter["name"]?.string else { continue }
            guard allowed.contains(name) else {
                throw apiError(
                    "InvalidParameterValueException",
                    "filter '\(name)' is not supported here; use one of: \(allowed.joined(separator: ", "))")
            }
            result[name, default: []] += filter["values"]?.array?.compactMap(\.string) ?? []
        }
        return result
    }

    func document(_ resource: StoredResource) throws -> Object {
        guard case .object(let object) = try JSONValue(parsing: resource.document) else {
            throw apiError("ServiceException", "the stored document of \(resource.arn) is damaged")
        }
        return object
    }

    func stored(_ arn: String, kind: ResourceKind) throws -> StoredResource {
        guard let resource = try store.resource(arn: arn), resource.kind == kind else {
            throw apiError("ResourceNotFoundException", "\(ResourceNaming.of(kind).label) \(arn) does not exist")
        }
        return resource
    }
}

/// An API error with the HTTP status Image Builder's model gives `code`.
func apiError(_ code: String, _ message: String) -> APIError {
    APIError(modelled: code, message)
}

extension KilnError {
    /// The API error a Kiln error from the store or a parser means.
    var apiError: APIError {
        switch code {
        case .notFound: APIError(modelled: "ResourceNotFoundException", message)
        case .alreadyExists: APIError(modelled: "ResourceAlreadyExistsException", message)
        case .invalidArgument, .invalidDocument: APIError(modelled: "InvalidParameterValueException", description)
        case .unsupported: APIError(modelled: "InvalidRequestException", message)
        default: APIError(modelled: "ServiceException", message)
        }
    }
}
