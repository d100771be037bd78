import Testing

@testable import KilnModel

@Suite("Container recipe Dockerfile templates")
struct DockerfileTemplateTests {
    @Test("The canonical template: parent image, then environments, then components")
    func canonical() throws {
        let template = try DockerfileTemplate(
            parsing: DockerfileTemplate.canonical, parentImage: "bootstrap:debian:bookworm", source: "web/1.0.0")
        #expect(template.steps.map(\.instruction) == [.from(image: "bootstrap:debian:bookworm"), .environments, .components])
    }

    @Test("Every supported instruction, shell and exec forms, continuations and comments")
    func instructions() throws {
        let text = #"""
            ARG BASE_TAG=1
            FROM {{{ imagebuilder:parentImage }}}
            # a comment
            ENV APP_HOME=/srv/app GREETING="hello world"
            ENV LEGACY some value
            {{{ imagebuilder:environments }}}
            {{{ imagebuilder:components }}}
            RUN apt-get update && \
                apt-get install -y nginx
            RUN ["/bin/echo", "exec form"]
            SHELL ["/bin/bash", "-c"]
            RUN echo $BASH_VERSION
            WORKDIR /srv/app
            USER www-data:www-data
            LABEL org.opencontainers.image.title="web" tier=front
            EXPOSE 80 443/tcp
            VOLUME ["/var/log/nginx"]
            STOPSIGNAL SIGQUIT
            HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/ || exit 1
            COPY --chown=www-data:www-data site/ /srv/app/
            ADD config.tar /etc/nginx/
            ENTRYPOINT ["nginx"]
            CMD ["-g", "daemon off;"]
            """#
        let steps = try DockerfileTemplate(parsing: text, parentImage: "registry.example/debian:12", source: "web/1.0.0").steps
        let instructions = steps.map(\.instruction)
        #expect(instructions[0] == .arg(name: "BASE_TAG", defaultValue: "1"))
        #expect(instructions[1] == .from(image: "registry.example/debian:12"))
        #expect(instructions[2] == .env([.init(name: "APP_HOME", value: "/srv/app"), .init(name: "GREETING", value: "hello world")]))
        #expect(instructions[3] == .env([.init(name: "LEGACY", value: "some value")]))
        #expect(instructions[6] == .run(command: ["/bin/sh", "-c", "apt-get update &&      apt-get install -y nginx"]))
        #expect(steps[6].line == 8, "an instruction is reported at the line where it starts")
        #expect(instructions[7] == .run(command: ["/bin/echo", "exec form"]))
        #expect(instructions[9] == .run(command: ["/bin/bash", "-c", "echo $BASH_VERSION"]), "SHELL changes later shell forms")
        #expect(instructions[11] == .user("www-data:www-data"))
        #expect(
            instructions[12] == .label([.init(name: "org.opencontainers.image.title", value: "web"), .init(name: "tier", value: "front")]))
        #expect(instructions[13] == .expose(["80", "443/tcp"]))
        #expect(instructions[14] == .volume(["/var/log/nginx"]))
        #expect(instructions[15] == .stopSignal("SIGQUIT"))
        #expect(
            instructions[16]
                == .healthcheck(
                    command: ["/bin/bash", "-c", "curl -f http://localhost/ || exit 1"], options: ["interval": "5s", "retries": "3"]))
        #expect(instructions[17] == .copy(sources: ["site/"], destination: "/srv/app/", chown: "www-data:www-data"))
        #expect(instructions[18] == .add(sources: ["config.tar"], destination: "/etc/nginx/", chown: nil))
        #expect(instructions[19] == .entrypoint(["nginx"]))
        #expect(instructions[20] == .cmd(["-g", "daemon off;"]))
    }

    @Test(
        "Mistakes name the recipe and the line, and say what to do",
        arguments: [
            ("FROM x\nRUNN echo", "line 2: unknown instruction 'RUNN'"),
            ("RUN echo", "must start with FROM"),
            ("FROM x\n{{{ imagebuilder:components }}}", "must come after {{{ imagebuilder:environments }}}"),
            ("FROM x\nCOPY https://example.com/a /a", "from a URL"),
            ("FROM x\nEXPOSE http", "EXPOSE takes ports"),
            ("FROM x\nFROM y", "multi-stage templates are not supported"),
            ("FROM x\nHEALTHCHECK --bogus=1 CMD true", "--bogus=1 is not one of"),
            ("FROM x\nENV =oops", "must be NAME=value"),
        ])
    func mistakes(_ text: String, _ expected: String) {
        let error = #expect(throws: KilnError.self) { try DockerfileTemplate(parsing: text, parentImage: "p", source: "web/1.0.0") }
        #expect(error?.message.contains(expected) == true && error?.message.hasPrefix("web/1.0.0") == true, "\(error?.message ?? "")")
    }
}
