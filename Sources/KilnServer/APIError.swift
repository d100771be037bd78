/// An error the API answers with, in AWS's REST-JSON form: `code` is the exception's name
/// (botocore turns it into `client.exceptions.<code>`), `status` the HTTP status, `message` what
/// was wrong and what to do. The modelled exceptions take their status from the model's
/// `error.httpStatusCode`; `response(requestID:)` renders any of them.
public struct APIError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: String
    public var status: Int
    public var message: String
    /// Headers the error adds to its response (`Allow` for a wrong method).
    public var headers: [String: String]

    public init(code: String, status: Int, message: String, headers: [String: String] = [:]) {
        self.code = code
        self.status = status
        self.message = message
        self.headers = headers
    }

    /// A modelled exception, with the HTTP status the model gives it (400 for a code the model
    /// does not define).
    public init(modelled code: String, _ message: String) {
        self.init(code: code, status: APIModel.imagebuilder.exceptionStatus[code] ?? 400, message: message)
    }

    public var description: String { "\(code) (\(status)): \(message)" }
}

// MARK: - Image Builder's exceptions

extension APIError {
    public static func accessDenied(_ message: String) -> APIError { APIError(modelled: "AccessDeniedException", message) }
    public static func callRateLimitExceeded(_ message: String) -> APIError {
        APIError(modelled: "CallRateLimitExceededException", message)
    }
    public static func clientException(_ message: String) -> APIError { APIError(modelled: "ClientException", message) }
    public static func dryRunOperation(_ message: String) -> APIError { APIError(modelled: "DryRunOperationException", message) }
    public static func forbidden(_ message: String) -> APIError { APIError(modelled: "ForbiddenException", message) }
    public static func idempotentParameterMismatch(_ message: String) -> APIError {
        APIError(modelled: "IdempotentParameterMismatchException", message)
    }
    public static func invalidPaginationToken(_ message: String) -> APIError {
        APIError(modelled: "InvalidPaginationTokenException", message)
    }
    public static func invalidParameterCombination(_ message: String) -> APIError {
        APIError(modelled: "InvalidParameterCombinationException", message)
    }
    public static func invalidParameter(_ message: String) -> APIError { APIError(modelled: "InvalidParameterException", message) }
    public static func invalidParameterValue(_ message: String) -> APIError {
        APIError(modelled: "InvalidParameterValueException", message)
    }
    public static func invalidRequest(_ message: String) -> APIError { APIError(modelled: "InvalidRequestException", message) }
    public static func invalidVersionNumber(_ message: String) -> APIError {
        APIError(modelled: "InvalidVersionNumberException", message)
    }
    public static func resourceAlreadyExists(_ message: String) -> APIError {
        APIError(modelled: "ResourceAlreadyExistsException", message)
    }
    public static func resourceDependency(_ message: String) -> APIError {
        APIError(modelled: "ResourceDependencyException", message)
    }
    public static func resourceInUse(_ message: String) -> APIError { APIError(modelled: "ResourceInUseException", message) }
    public static func resourceNotFound(_ message: String) -> APIError { APIError(modelled: "ResourceNotFoundException", message) }
    public static func serviceException(_ message: String) -> APIError { APIError(modelled: "ServiceException", message) }
    public static func serviceQuotaExceeded(_ message: String) -> APIError {
        APIError(modelled: "ServiceQuotaExceededException", message)
    }
    public static func serviceUnavailable(_ message: String) -> APIError {
        APIError(modelled: "ServiceUnavailableException", message)
    }
    public static func tooManyRequests(_ message: String) -> APIError { APIError(modelled: "TooManyRequestsException", message) }
}

// MARK: - Errors of the HTTP layer

extension APIError {
    /// No operation's route matches the path (AWS's answer to an unknown REST path).
    public static func unknownOperation(method: String, path: String) -> APIError {
        APIError(
            code: "UnknownOperationException", status: 404,
            message: "No Image Builder operation is at \(method) \(path); check the endpoint URL and the client's API version (2019-12-02)")
    }

    /// The path is an operation's, the method is not (405, with `Allow`).
    public static func methodNotAllowed(method: String, path: String, allowed: [String]) -> APIError {
        APIError(
            code: "MethodNotAllowedException", status: 405,
            message: "\(method) is not allowed at \(path); use \(allowed.joined(separator: " or "))",
            headers: ["Allow": allowed.joined(separator: ", ")])
    }

    /// A modelled operation Kiln does not implement. InvalidRequestException is the model's own
    /// "You have requested an action that the service doesn't support": a 400 that botocore
    /// does not retry and that boto3 users catch as `client.exceptions.InvalidRequestException`
    /// (botocore retries a 5xx, and a made-up code has no exception class).
    public static func notSupported(_ operationName: String) -> APIError {
        .invalidRequest("Kiln does not support \(operationName) yet")
    }

    /// A request body over `APIRequestDecoder.maximumBodyBytes`.
    public static func requestTooLarge(bytes: Int, limit: Int) -> APIError {
        APIError(
            code: "RequestEntityTooLargeException", status: 413,
            message: "The request body has \(bytes) bytes; Kiln accepts at most \(limit)")
    }
}

// MARK: - Rendering

extension APIError {
    /// The HTTP response AWS's REST-JSON services send for an error, which botocore's
    /// RestJSONParser reads: the code from `X-Amzn-ErrorType` (and `__type` in the body),
    /// the message from `message`, the request id from `x-amzn-RequestId`.
    public func response(requestID: String) -> APIResponse {
        var headers = headers
        headers["Content-Type"] = "application/json"
        headers["X-Amzn-ErrorType"] = code
        headers["x-amzn-RequestId"] = requestID
        let body: JSONValue = ["__type": .string(code), "message": .string(message)]
        return APIResponse(status: status, headers: headers, body: body.encoded())
    }
}

/// An HTTP response ready to send: status, headers and body bytes.
public struct APIResponse: Sendable, Hashable {
    public var status: Int
    public var headers: [String: String]
    public var body: [UInt8]

    public init(status: Int, headers: [String: String], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}
