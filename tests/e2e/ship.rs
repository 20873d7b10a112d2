//! The shipping files, `Dockerfile` and `docker-compose-demo.yml`, checked against the binary
//! they ship. No Docker engine runs here, so these tests read the files as Docker and Compose
//! would and run the real binary with the arguments the image and the demo give it: a
//! subcommand, flag or environment variable that the binary does not know fails here, not
//! in someone's container.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::support::proxy::BIN;

/// The name the image runs the binary by (ENTRYPOINT, HEALTHCHECK, `docker exec`).
const BINARY: &str = "docker-flow-proxy";

// ---------------------------------------------------------------------------------------
// Dockerfile

#[test]
fn dockerfile_runs_real_subcommands_in_exec_form() {
    let dockerfile = Dockerfile::read();
    let runtime = dockerfile.runtime();

    // No shell in the image: every command must be in exec form (a JSON array).
    let entrypoint = exec_form(runtime.last("ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(entrypoint, [BINARY], "the image's entrypoint is the binary itself");
    let cmd = exec_form(runtime.last("CMD"), "CMD");
    assert_eq!(cmd.first().map(String::as_str), Some("server"), "CMD starts the proxy: {cmd:?}");
    let usage = run_ok(&with_help(&cmd));
    assert!(usage.contains("Usage: docker-flow-proxy server"), "{usage}");

    let healthcheck = runtime.last("HEALTHCHECK");
    let (options, check) = healthcheck
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK has a CMD: {healthcheck}"));
    assert!(
        options.split_whitespace().all(|option| option.starts_with("--")),
        "only --options stand before the HEALTHCHECK's CMD: {options}"
    );
    let check = exec_form(check, "HEALTHCHECK CMD");
    assert_eq!(check.first().map(String::as_str), Some(BINARY), "{check:?}");
    assert_eq!(check.get(1).map(String::as_str), Some("ping"), "health is the admin API's ping");
    let usage = run_ok(&with_help(&check[1..]));
    assert!(usage.contains("Usage: docker-flow-proxy ping"), "{usage}");
}

#[test]
fn dockerfile_puts_the_binary_on_path_with_its_port_80_capability() {
    let dockerfile = Dockerfile::read();
    let runtime = dockerfile.runtime();
    let target = format!("/usr/local/bin/{BINARY}");

    // `docker exec docker-flow-proxy docker-flow-proxy reconfigure ...` finds it by PATH.
    let path = runtime.env("PATH").expect("the runtime stage sets PATH");
    assert!(path.split(':').any(|dir| dir == "/usr/local/bin"), "PATH={path}");
    let copy = runtime
        .copies()
        .find(|copy| copy.dest == target)
        .unwrap_or_else(|| panic!("the runtime stage copies the binary to {target}"));
    let builder = dockerfile.stage(copy.from.as_deref().expect("the binary comes from a stage"));

    // The builder links it statically (the runtime stage has no libc) from the locked deps.
    let build = builder.run_containing("cargo build");
    for needed in ["+crt-static", "--release", "--locked"] {
        assert!(build.contains(needed), "the builder's cargo build has {needed}: {build}");
    }
    // Port 80 as a non-root user: the file capability, set on the file the runtime copies.
    // A chown clears it, so that COPY must not have --chown.
    let setcap = builder.run_containing("setcap");
    assert!(
        setcap.contains(&format!("cap_net_bind_service=+ep {}", copy.src)),
        "the builder sets cap_net_bind_service on {}: {setcap}",
        copy.src
    );
    assert!(copy.chown.is_none(), "a chown would drop the capability: {copy:?}");
}

#[test]
fn dockerfile_runtime_is_minimal_non_root_and_can_write_its_state() {
    let dockerfile = Dockerfile::read();
    let runtime = dockerfile.runtime();
    assert!(
        runtime.from == "scratch" || runtime.from.starts_with("gcr.io/distroless/static"),
        "the runtime stage is scratch or distroless static, not {}",
        runtime.from
    );

    let user = runtime.last("USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(!uid.is_empty() && uid != "0" && uid != "root", "USER is not root: {user}");

    // The standalone state file is written in the working directory: the user must own it.
    let workdir = runtime.last("WORKDIR");
    let state = runtime
        .copies()
        .find(|copy| copy.dest.trim_end_matches('/') == workdir.trim_end_matches('/'))
        .unwrap_or_else(|| panic!("the runtime stage creates its WORKDIR {workdir} by a COPY"));
    let owner = state.chown.as_deref().unwrap_or_default();
    assert_eq!(owner.split(':').next(), Some(uid), "WORKDIR {workdir} belongs to USER {user}");

    // The standalone state file is named by DFP_STATE_FILE (a variable `server` reads), in a
    // directory the COPY above makes and gives to the user: the binary's own default, the XDG
    // state directory under $HOME, means nothing in a scratch image.
    let state_file = runtime.env("DFP_STATE_FILE").expect("the runtime stage sets DFP_STATE_FILE");
    let state_dir = Path::new(state_file).parent().expect("DFP_STATE_FILE names a file in a dir");
    assert!(state_dir.is_absolute(), "DFP_STATE_FILE is absolute: {state_file}");
    assert_eq!(
        state_dir,
        Path::new(state.dest.trim_end_matches('/')),
        "DFP_STATE_FILE={state_file} is in the directory owned by USER {user}"
    );
    let help = run_ok(&["server", "--help"]);
    assert!(env_names(&help).contains("DFP_STATE_FILE"), "`server` reads DFP_STATE_FILE");

    // Consul over https needs the CA certificates, copied in directly or with a root tree
    // that its stage filled.
    let has_certs = runtime.copies().any(|copy| {
        copy.dest.starts_with("/etc/ssl")
            || (copy.dest == "/"
                && copy.from.as_deref().is_some_and(|from| {
                    dockerfile.stage(from).all("RUN").any(|run| run.contains("ca-certificates.crt"))
                }))
    });
    assert!(has_certs, "the runtime stage has CA certificates");
    assert_eq!(runtime.env("SSL_CERT_FILE"), Some("/etc/ssl/certs/ca-certificates.crt"));
}

#[test]
fn dockerfile_exposes_the_ports_the_binary_listens_on() {
    let dockerfile = Dockerfile::read();
    let exposed: BTreeSet<String> = dockerfile
        .runtime()
        .all("EXPOSE")
        .flat_map(str::split_whitespace)
        .map(|port| port.trim_end_matches("/tcp").to_owned())
        .collect();

    let server = run_ok(&["server", "--help"]);
    let proxy_port = port_of(&default_of(&server, "--listen"));
    let admin_port = port_of(&default_of(&server, "--admin-listen"));
    assert_eq!((proxy_port.as_str(), admin_port.as_str()), ("80", "8080"));
    for port in [&proxy_port, &admin_port] {
        assert!(exposed.contains(port), "EXPOSE {port} (exposed: {exposed:?})");
    }
    // The HEALTHCHECK's `ping` has no --admin: its default must reach the admin listener.
    let ping = run_ok(&["ping", "--help"]);
    assert_eq!(port_of(&default_of(&ping, "--admin")), admin_port);
}

/// A Dockerfile as the builder reads it: continuation lines joined, comments dropped.
#[derive(Debug)]
struct Dockerfile {
    stages: Vec<Stage>,
}

#[derive(Debug)]
struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

#[derive(Debug)]
struct Copy {
    from: Option<String>,
    chown: Option<String>,
    src: String,
    dest: String,
}

impl Dockerfile {
    fn read() -> Dockerfile {
        let text = read_repo_file("Dockerfile");
        let mut stages: Vec<Stage> = Vec::new();
        let mut pending = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
                continue;
            }
            if let Some(continued) = trimmed.strip_suffix('\\') {
                pending.push_str(continued);
                pending.push(' ');
                continue;
            }
            pending.push_str(trimmed);
            let instruction = std::mem::take(&mut pending);
            let (keyword, args) =
                instruction.split_once(char::is_whitespace).unwrap_or((&instruction, ""));
            let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_owned());
            if keyword == "FROM" {
                let words: Vec<&str> =
                    args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                    _ => None,
                };
                let from = words.first().map(|w| (*w).to_owned()).unwrap_or_default();
                stages.push(Stage { from, name, instructions: Vec::new() });
            } else if let Some(stage) = stages.last_mut() {
                stage.instructions.push((keyword, args));
            }
        }
        assert!(stages.len() >= 2, "the Dockerfile is multi-stage: {stages:?}");
        Dockerfile { stages }
    }

    /// The last stage: what `docker build` turns into the image.
    fn runtime(&self) -> &Stage {
        self.stages.last().expect("the Dockerfile has stages")
    }

    fn stage(&self, name: &str) -> &Stage {
        self.stages
            .iter()
            .find(|stage| stage.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("the Dockerfile has a stage named {name}"))
    }
}

impl Stage {
    fn all<'a>(&'a self, keyword: &str) -> impl Iterator<Item = &'a str> + 'a {
        let keyword = keyword.to_owned();
        self.instructions.iter().filter(move |(k, _)| *k == keyword).map(|(_, args)| args.as_str())
    }

    /// The instruction that takes effect: the last of its kind in the stage.
    fn last(&self, keyword: &str) -> &str {
        self.all(keyword).last().unwrap_or_else(|| panic!("the {} stage has {keyword}", self.from))
    }

    fn run_containing(&self, needle: &str) -> &str {
        self.all("RUN")
            .find(|run| run.contains(needle))
            .unwrap_or_else(|| panic!("the {} stage runs {needle}", self.from))
    }

    /// The value an ENV instruction of this stage gives `name` (`ENV A=1 B=2` form).
    fn env(&self, name: &str) -> Option<&str> {
        self.all("ENV")
            .flat_map(str::split_whitespace)
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| *key == name)
            .map(|(_, value)| value.trim_matches('"'))
            .last()
    }

    fn copies(&self) -> impl Iterator<Item = Copy> + '_ {
        self.all("COPY").map(|args| {
            let mut copy =
                Copy { from: None, chown: None, src: String::new(), dest: String::new() };
            let mut paths = Vec::new();
            for word in args.split_whitespace() {
                if let Some(from) = word.strip_prefix("--from=") {
                    copy.from = Some(from.to_owned());
                } else if let Some(chown) = word.strip_prefix("--chown=") {
                    copy.chown = Some(chown.to_owned());
                } else if !word.starts_with("--") {
                    paths.push(word.to_owned());
                }
            }
            assert_eq!(paths.len(), 2, "COPY takes one source and a destination here: {args}");
            copy.dest = paths.pop().unwrap_or_default();
            copy.src = paths.pop().unwrap_or_default();
            copy
        })
    }
}

/// An instruction's exec form (JSON array); the runtime image has no shell for the other.
fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args.trim()).unwrap_or_else(|e| {
        panic!("{what} is in exec form (a JSON array of strings), the image has no shell: {args} ({e})")
    })
}

// ---------------------------------------------------------------------------------------
// docker-compose-demo.yml

#[test]
fn compose_demo_has_consul_registrator_the_proxy_and_books_ms() {
    let compose = Compose::read();
    for name in ["consul", "registrator", "proxy"] {
        compose.service(name);
    }
    let (name, books) = compose.books_ms();
    assert_ne!(name, "proxy");

    // Consul's dev agent, reachable from the other containers.
    let consul = compose.service("consul");
    let image = str_of(&consul["image"]);
    assert!(image.starts_with("hashicorp/consul"), "consul runs hashicorp/consul: {image}");
    let command = words(&consul["command"]);
    assert!(command.iter().any(|w| w == "-dev"), "consul is a dev agent: {command:?}");
    assert!(has_flag_value(&command, "-client", "0.0.0.0"), "consul serves other containers");

    // Scaling books-ms means more containers of one service: nothing may pin a name or a
    // host port, and Registrator must see one port so the name stays `books-ms`.
    assert!(books["container_name"].is_badvalue(), "{name} has no fixed container_name");
    for port in list(&books["ports"]) {
        let port = match &port {
            Yaml::Integer(port) => port.to_string(),
            other => str_of(other).to_owned(),
        };
        assert!(!port.contains(':'), "{name} publishes no fixed host port: {port}");
    }
    assert_eq!(list(&books["expose"]).len(), 1, "{name} exposes exactly one port");
}

#[test]
fn compose_demo_wires_proxy_and_registrator_to_consul() {
    let compose = Compose::read();
    let consul = "consul";

    let proxy = compose.service("proxy");
    assert_eq!(str_of(&proxy["container_name"]), "docker-flow-proxy", "`docker exec` uses it");
    let published: Vec<(String, String)> =
        list(&proxy["ports"]).iter().map(published_port).collect();
    for port in ["80", "8080"] {
        assert!(
            published.contains(&(port.to_owned(), port.to_owned())),
            "the proxy publishes {port}:{port}: {published:?}"
        );
    }
    let env = env_of(proxy);
    let address = env
        .iter()
        .find(|(key, _)| key == "CONSUL_ADDRESS")
        .map(|(_, value)| value.as_str())
        .expect("the proxy has CONSUL_ADDRESS");
    assert_eq!(address, format!("http://{consul}:8500"), "the proxy asks the consul service");
    let depends = match &proxy["depends_on"] {
        Yaml::Hash(map) => map.keys().map(|k| str_of(k).to_owned()).collect(),
        other => list(other).iter().map(|k| str_of(k).to_owned()).collect::<Vec<_>>(),
    };
    assert!(depends.iter().any(|d| d == consul), "the proxy depends on consul: {depends:?}");
    let context = match &proxy["build"] {
        Yaml::Hash(_) => str_of(&proxy["build"]["context"]),
        other => str_of(other),
    };
    assert!(repo_root().join(context).join("Dockerfile").is_file(), "the proxy builds {context}");

    let registrator = compose.service("registrator");
    let image = str_of(&registrator["image"]);
    assert!(image.starts_with("gliderlabs/registrator"), "{image}");
    let command = words(&registrator["command"]);
    assert!(command.iter().any(|w| w == "-internal"), "container IPs and ports: {command:?}");
    assert_eq!(
        command.last().map(String::as_str),
        Some("consul://consul:8500"),
        "Registrator's last argument is the registry URI; flags come before it"
    );
    // Registrator's image reads the Docker API at /tmp/docker.sock.
    let volumes: Vec<String> =
        list(&registrator["volumes"]).iter().map(|v| str_of(v).to_owned()).collect();
    assert!(
        volumes.iter().any(|v| v == "/var/run/docker.sock:/tmp/docker.sock:ro"),
        "Registrator sees the Docker socket, read-only: {volumes:?}"
    );
}

#[test]
fn compose_demo_gives_the_proxy_only_settings_the_binary_knows() {
    let compose = Compose::read();
    let proxy = compose.service("proxy");
    let command = words(&proxy["command"]);
    // Without `command` the image's CMD applies; either way it is a real subcommand.
    let subcommand = command.first().map(String::as_str).unwrap_or("server");
    assert_eq!(subcommand, "server", "the demo's proxy runs the server");
    let help = run_ok(&[subcommand, "--help"]);

    let known_env = env_names(&help);
    assert!(known_env.contains("CONSUL_ADDRESS"), "{known_env:?}");
    for (key, _) in env_of(proxy) {
        assert!(known_env.contains(&key), "`server` reads no {key} (it reads {known_env:?})");
    }
    let known_flags = flag_names(&help);
    for flag in command.iter().filter(|w| w.starts_with("--")) {
        let flag = flag.split('=').next().unwrap_or_default();
        assert!(known_flags.contains(flag), "`server` has no {flag} (it has {known_flags:?})");
    }
}

/// The Let's Encrypt override: it adds to the demo's proxy only what turns ACME on, with
/// settings the binary knows, and publishes 443 where the certificates are served.
#[test]
fn compose_lets_encrypt_override_turns_acme_on_with_settings_the_binary_knows() {
    let demo = Compose::read();
    let lets_encrypt = Compose::read_file("docker-compose-letsencrypt.yml");
    let services = lets_encrypt.doc["services"].as_hash().expect("the override has services");
    assert_eq!(services.len(), 1, "it overrides the proxy only");
    let proxy = lets_encrypt.service("proxy");
    demo.service("proxy");
    let published: Vec<(String, String)> =
        list(&proxy["ports"]).iter().map(published_port).collect();
    assert!(published.contains(&("443".to_owned(), "443".to_owned())), "{published:?}");
    let env = env_of(proxy);
    let known_env = env_names(&run_ok(&["server", "--help"]));
    for (key, _) in &env {
        assert!(known_env.contains(key), "`server` reads no {key}");
    }
    assert!(env.iter().any(|(k, v)| k == "DFP_ACME_AGREE_TOS" && v == "true"), "{env:?}");
    assert!(env.iter().any(|(k, v)| k == "DFP_ACME_EMAIL" && v.contains("ACME_EMAIL")), "{env:?}");
}

/// The demo without Registrator (for engines that refuse its image): the same Consul, proxy
/// and books-ms, and in Registrator's place a one-shot container of the Consul image that
/// registers books-ms with the Consul CLI. Its script is checked by `sh -n`, as the image's
/// shell would parse it once Compose has turned each `$$` into `$`.
#[test]
fn compose_demo_without_registrator_registers_books_ms_with_the_consul_cli() {
    let with = Compose::read();
    let without = Compose::read_file("docker-compose-demo-no-registrator.yml");
    let services = without.doc["services"].as_hash().expect("the demo has services");
    assert!(
        !services.values().any(|service| str_of(&service["image"]).contains("registrator")),
        "no Registrator image in the demo without Registrator"
    );

    // What the article's steps touch is the same as in the Registrator demo.
    for name in ["consul", "proxy"] {
        for key in ["image", "command", "ports", "environment", "container_name", "build"] {
            assert_eq!(
                with.service(name)[key],
                without.service(name)[key],
                "{name}'s {key} is the same in both demos"
            );
        }
    }
    let books = without.service("books-ms");
    assert_eq!(books["image"], with.books_ms().1["image"], "books-ms runs the same image");
    assert_eq!(list(&books["expose"]).len(), 1, "books-ms exposes exactly one port");
    assert!(books["container_name"].is_badvalue(), "books-ms can be scaled");

    // The one-shot registration: the Consul image, its CLI pointed at the consul service.
    let register = without.service("register");
    assert_eq!(register["image"], with.service("consul")["image"], "the Consul image's CLI");
    let env = env_of(register);
    assert!(
        env.iter().any(|(k, v)| k == "CONSUL_HTTP_ADDR" && v == "http://consul:8500"),
        "the CLI talks to the consul service: {env:?}"
    );
    let entrypoint = words(&register["entrypoint"]);
    assert_eq!(entrypoint, ["/bin/sh", "-ec"], "the script runs in the image's shell");
    let script = list(&register["command"]);
    let [script] = script.as_slice() else { panic!("one script as the command: {script:?}") };
    let script = str_of(script).replace("$$", "$");
    for needed in ["consul services register", "-name=books-ms", "-port=80", "nslookup books-ms"] {
        assert!(script.contains(needed), "the script has {needed}: {script}");
    }
    let check = Command::new("sh").args(["-n", "-c", &script]).output().expect("sh runs");
    assert!(check.status.success(), "sh -n: {}", String::from_utf8_lossy(&check.stderr));
}

#[derive(Debug)]
struct Compose {
    doc: Yaml,
}

impl Compose {
    fn read() -> Compose {
        Compose::read_file("docker-compose-demo.yml")
    }

    fn read_file(name: &str) -> Compose {
        let text = read_repo_file(name);
        let mut docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name} is YAML: {e}"));
        assert_eq!(docs.len(), 1, "one YAML document in {name}");
        Compose { doc: docs.remove(0) }
    }

    fn service(&self, name: &str) -> &Yaml {
        let service = &self.doc["services"][name];
        assert!(service.as_hash().is_some(), "the demo has a `{name}` service");
        service
    }

    /// The service that Registrator puts in Consul as `books-ms`.
    fn books_ms(&self) -> (&str, &Yaml) {
        let services = self.doc["services"].as_hash().expect("the demo has services");
        services
            .iter()
            .find(|(_, service)| {
                env_of(service).iter().any(|(k, v)| k == "SERVICE_NAME" && v == "books-ms")
            })
            .map(|(name, service)| (str_of(name), service))
            .expect("a service has SERVICE_NAME=books-ms, the name Registrator gives it in Consul")
    }
}

fn str_of(yaml: &Yaml) -> &str {
    yaml.as_str().unwrap_or_else(|| panic!("expected a string, found {yaml:?}"))
}

/// A sequence, or nothing when the key is absent.
fn list(yaml: &Yaml) -> Vec<Yaml> {
    match yaml {
        Yaml::Array(items) => items.clone(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => panic!("expected a list, found {other:?}"),
    }
}

/// A `command`: a string split as Compose splits it (no quotes here), or a list.
fn words(yaml: &Yaml) -> Vec<String> {
    match yaml {
        Yaml::String(command) => command.split_whitespace().map(str::to_owned).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => list(other).iter().map(|w| str_of(w).to_owned()).collect(),
    }
}

/// `environment`, as a map or as a list of `KEY=VALUE`.
fn env_of(service: &Yaml) -> Vec<(String, String)> {
    let scalar = |value: &Yaml| match value {
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => str_of(other).to_owned(),
    };
    match &service["environment"] {
        Yaml::Hash(map) => map.iter().map(|(k, v)| (str_of(k).to_owned(), scalar(v))).collect(),
        other => list(other)
            .iter()
            .map(|pair| {
                let (key, value) = str_of(pair).split_once('=').unwrap_or((str_of(pair), ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
    }
}

/// `(host port, container port)` of a `ports` entry, short or long syntax.
fn published_port(entry: &Yaml) -> (String, String) {
    if entry.as_hash().is_some() {
        let port = |yaml: &Yaml| match yaml {
            Yaml::Integer(port) => port.to_string(),
            other => str_of(other).to_owned(),
        };
        return (port(&entry["published"]), port(&entry["target"]));
    }
    let spec = str_of(entry);
    let spec = spec.split('/').next().unwrap_or_default();
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    match parts.as_slice() {
        [container, host, ..] => ((*host).to_owned(), (*container).to_owned()),
        _ => (String::new(), spec.to_owned()),
    }
}

fn has_flag_value(command: &[String], flag: &str, value: &str) -> bool {
    command.windows(2).any(|pair| pair[0] == flag && pair[1] == value)
        || command.iter().any(|w| *w == format!("{flag}={value}"))
}

// ---------------------------------------------------------------------------------------
// The binary and the repository

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_repo_file(name: &str) -> String {
    let path = repo_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn with_help(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).chain(["--help"]).collect()
}

/// Runs the binary with `args`; it must succeed. Returns what it printed.
fn run_ok(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("the binary runs");
    assert!(
        out.status.success(),
        "`docker-flow-proxy {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `[default: ...]` of `flag` in clap's help output (its entry runs to the next flag).
fn default_of(help: &str, flag: &str) -> String {
    let mut lines = help.lines().skip_while(|line| !option_words(line).any(|w| w == flag));
    let first = lines.next().unwrap_or_else(|| panic!("the help lists {flag}: {help}"));
    let entry: Vec<&str> = std::iter::once(first)
        .chain(lines.take_while(|line| option_words(line).next().is_none()))
        .collect();
    let entry = entry.join(" ");
    let value = entry
        .split("[default: ")
        .nth(1)
        .and_then(|tail| tail.split(']').next())
        .unwrap_or_else(|| panic!("{flag} has a default: {entry}"));
    value.to_owned()
}

/// The flags a line of clap's help output introduces (`-h, --help`, `--listen <LISTEN>`);
/// none for a description line.
fn option_words(line: &str) -> impl Iterator<Item = &str> {
    let is_option = line.trim_start().starts_with('-');
    line.split_whitespace()
        .take_while(move |_| is_option)
        .map(|word| word.trim_end_matches(','))
        .filter(|word| word.starts_with("--"))
}

/// The port of `host:port` or of a URL.
fn port_of(address: &str) -> String {
    address.rsplit(':').next().unwrap_or_default().trim_end_matches('/').to_owned()
}

/// Every `[env: NAME=...]` (or `[env: NAME]`, for secrets whose value is hidden) of clap's
/// help output.
fn env_names(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|tail| tail.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `--flag` that clap's help output lists.
fn flag_names(help: &str) -> BTreeSet<String> {
    help.lines().flat_map(option_words).map(str::to_owned).collect()
}
