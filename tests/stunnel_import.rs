//! `dctunnel import-stunnel` on the realistic stunnel files of
//! tests/stunnel-configs: what the user sees on standard output and error,
//! and whether `dctunnel check` accepts the result. Ends with a bounded fuzz
//! run of the parser and translator.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dctunnel::stunnel::{self, IncludeResolver, Setting, Severity, SourceFile};

const BIN: &str = env!("CARGO_BIN_EXE_dctunnel");

/// What each fixture must give.
struct Fixture {
    file: &'static str,
    /// Whether `dctunnel check` accepts the translation once the certificate
    /// files the stunnel file names exist.
    check_passes: bool,
    /// The names of the services written enabled, in order.
    services: &'static [&'static str],
    /// When check refuses it: what its report must say (and nothing more).
    refused_because: &'static [&'static str],
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        file: "crlf-bom.conf",
        check_passes: true,
        services: &["legacy-app"],
        refused_because: &[],
    },
    Fixture {
        file: "exposed-client.conf",
        check_passes: false,
        services: &["mongodb", "redis"],
        refused_because: &[
            "service \"mongodb\": listen: client mode accepts plaintext, and 0.0.0.0 is a wildcard address",
            "service \"redis\": listen: client mode accepts plaintext, and 213.36.253.206 is a public address",
        ],
    },
    Fixture {
        file: "includes.conf",
        check_passes: true,
        services: &["mongodb", "redis"],
        refused_because: &[],
    },
    Fixture {
        file: "inetd.conf",
        check_passes: false,
        services: &[],
        refused_because: &["no [[service]] defined"],
    },
    Fixture {
        file: "off2-psk-per-service.conf",
        check_passes: false,
        services: &["OffMongodb", "OffRedis", "OffInfluxdb"],
        refused_because: &[
            "service \"OffMongodb\": cert: is required",
            "service \"OffMongodb\": key: is required",
            "service \"OffMongodb\": ca: is required",
            "service \"OffMongodb\": allow_peers: is required in server mode",
            "service \"OffRedis\": cert: is required",
            "service \"OffRedis\": key: is required",
            "service \"OffRedis\": ca: is required",
            "service \"OffRedis\": allow_peers: is required in server mode",
            "service \"OffInfluxdb\": cert: is required",
            "service \"OffInfluxdb\": key: is required",
            "service \"OffInfluxdb\": ca: is required",
            "service \"OffInfluxdb\": allow_peers: is required in server mode",
        ],
    },
    Fixture {
        file: "off2-psk.conf",
        check_passes: false,
        services: &["mongodb", "redis"],
        refused_because: &[
            "service \"mongodb\": cert: is required",
            "service \"mongodb\": key: is required",
            "service \"mongodb\": ca: is required",
            "service \"mongodb\": allow_peers: is required in server mode",
            "service \"redis\": cert: is required",
            "service \"redis\": key: is required",
            "service \"redis\": ca: is required",
            "service \"redis\": allow_peers: is required in server mode",
        ],
    },
    Fixture {
        file: "off2.conf",
        check_passes: true,
        services: &["mongodb", "redis"],
        refused_because: &[],
    },
    Fixture {
        file: "ovh-client-psk.conf",
        check_passes: false,
        services: &["mongodb", "redis"],
        refused_because: PSK_REFUSALS,
    },
    Fixture {
        file: "ovh-client.conf",
        check_passes: true,
        services: &["mongodb-off2", "redis-off2"],
        refused_because: &[],
    },
    Fixture {
        file: "problems.conf",
        check_passes: false,
        services: &["mongodb", "mongodb-2", "smtp-starttls"],
        // stunnel also filtered its clients with hosts.allow (libwrap).
        refused_because: &[
            "service \"smtp-starttls\": allow_peers: is required in server mode",
        ],
    },
    Fixture {
        file: "robotoff-ipv6.conf",
        check_passes: true,
        services: &["robotoff", "off-query", "robotoff-local"],
        refused_because: &[],
    },
    Fixture {
        file: "smtp-pmg-client.conf",
        check_passes: true,
        services: &["smtp-pmg"],
        refused_because: &[],
    },
    Fixture {
        file: "smtp-pmg-server.conf",
        check_passes: true,
        services: &["smtp"],
        refused_because: &[],
    },
];

/// A pre-shared-key client service has no certificates until the user issues
/// them (a server one waits for its allow_peers as well).
const PSK_REFUSALS: &[&str] = &[
    "service \"mongodb\": cert: is required",
    "service \"mongodb\": key: is required",
    "service \"mongodb\": ca: is required",
    "service \"redis\": cert: is required",
    "service \"redis\": key: is required",
    "service \"redis\": ca: is required",
];

/// Every key a dctunnel service may have.
const SERVICE_KEYS: &[&str] = &[
    "name",
    "mode",
    "listen",
    "connect",
    "ca",
    "cert",
    "key",
    "allow_sources",
    "allow_peers",
    "server_name",
    "allow_public_listen",
    "max_connections",
    "max_connections_per_source",
    "connect_timeout",
    "handshake_timeout",
    "idle_timeout",
    "tls12",
    "peer_pins",
    "crl",
    "tls_resumption",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stunnel-configs")
}

/// The main stunnel files (conf.d/ holds included parts).
fn fixture_files() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    names.sort();
    names
}

/// The fixtures copied under a temporary root, `/etc/stunnel/` rewritten to
/// `<root>/etc/stunnel/` in every file, so that includes and certificate
/// paths resolve inside the root.
struct Mirror {
    root: tempfile::TempDir,
}

impl Mirror {
    fn new() -> Mirror {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc/stunnel");
        copy_rewriting(&fixtures_dir(), &etc, &format!("{}/", etc.display()));
        Mirror { root }
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.root.path().join("etc/stunnel").join(name)
    }

    /// Creates the CA, certificates, keys and CRLs the stunnel file names,
    /// all under one test CA. Writes nothing outside the root.
    fn provision(&self, name: &str) {
        let conf = self.conf(name);
        let text = fs::read_to_string(&conf).unwrap();
        let base = conf.parent().unwrap();
        let config = stunnel::parse(&text, name, &mut stunnel::DirIncludes::new(base)).unwrap();
        let ca = TestCa::new();
        let mut scopes = vec![config.global.as_slice()];
        scopes.extend(config.sections.iter().map(|s| s.settings.as_slice()));
        for scope in scopes {
            let get = |option: &str| -> Option<PathBuf> {
                let find = |list: &[Setting]| {
                    list.iter()
                        .rev()
                        .find(|s| s.is(option))
                        .map(|s| PathBuf::from(&s.value))
                };
                find(scope)
                    .or_else(|| find(&config.global))
                    .filter(|p| p.starts_with(self.root.path()))
            };
            if let Some(path) = get("CAfile") {
                write_new(&path, &ca.cert_pem);
            }
            if let Some(path) = get("CRLfile") {
                write_new(&path, &ca.crl_pem());
            }
            if let Some(cert) = get("cert") {
                if !cert.exists() {
                    let (cert_pem, key_pem) = ca.host("host.test");
                    match get("key") {
                        Some(key) if key != cert => {
                            write_new(&cert, &cert_pem);
                            write_private(&key, &key_pem);
                        }
                        _ => write_private(&cert, &format!("{cert_pem}{key_pem}")),
                    }
                }
            }
        }
    }
}

fn copy_rewriting(from: &Path, to: &Path, etc: &str) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_rewriting(&entry.path(), &target, etc);
        } else {
            let bytes = fs::read(entry.path()).unwrap();
            let text = String::from_utf8(bytes)
                .unwrap()
                .replace("/etc/stunnel/", etc);
            fs::write(target, text).unwrap();
        }
    }
}

fn write_new(path: &Path, contents: &str) {
    if !path.exists() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }
}

/// Writes a file holding a private key, readable by its owner only (as
/// `dctunnel check` requires).
fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    write_new(path, contents);
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stunnel import test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let cert_pem = issuer.pem();
        TestCa { issuer, cert_pem }
    }

    /// A host certificate and its key, both PEM.
    fn host(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn crl_pem(&self) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(30),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Runs `import-stunnel` on a fixture of `mirror`, expecting success.
struct Imported {
    toml: String,
    table: toml::Table,
    stderr: String,
}

fn import(mirror: &Mirror, name: &str) -> Imported {
    let out = run(&["import-stunnel".as_ref(), mirror.conf(name).as_os_str()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // A file that gives no service fails, its output written all the same.
    let gives_none = FIXTURES
        .iter()
        .any(|f| f.file == name && f.services.is_empty());
    assert_eq!(
        out.status.success(),
        !gives_none,
        "{name}: import status {}: {stderr}",
        out.status
    );
    let table =
        toml::from_str(&stdout).unwrap_or_else(|e| panic!("{name}: not TOML: {e}\n{stdout}"));
    Imported {
        toml: stdout,
        table,
        stderr,
    }
}

impl Imported {
    fn services(&self) -> Vec<&toml::Table> {
        match self.table.get("service") {
            Some(toml::Value::Array(list)) => list.iter().map(|s| s.as_table().unwrap()).collect(),
            None => Vec::new(),
            Some(other) => panic!("service is not an array of tables: {other}"),
        }
    }

    fn service(&self, name: &str) -> &toml::Table {
        self.services()
            .into_iter()
            .find(|s| s["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no service {name} in\n{}", self.toml))
    }

    fn defaults(&self) -> &toml::Table {
        self.table["defaults"].as_table().unwrap()
    }

    /// The comment lines right above `key = ...` in the service `name`.
    fn comments_above(&self, name: &str, key: &str) -> String {
        let start = self.toml.find(&format!("name = \"{name}\"")).unwrap();
        let rest = &self.toml[start..];
        let at = rest.find(&format!("\n{key} = ")).unwrap();
        let above: Vec<&str> = rest[..at]
            .lines()
            .rev()
            .take_while(|l| l.starts_with('#'))
            .collect();
        above.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The warnings on standard error (not the final verdict of a file that
    /// gave no service).
    fn warning_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| {
                ["problem", "unsupported", "note"]
                    .iter()
                    .any(|s| l.starts_with(&format!("dctunnel: {s}: ")))
            })
            .collect()
    }
}

fn str_list(value: &toml::Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[test]
fn every_fixture_has_an_expectation() {
    let files = fixture_files();
    assert!(files.len() >= 10, "only {} fixtures found", files.len());
    let expected: Vec<&str> = FIXTURES.iter().map(|f| f.file).collect();
    assert_eq!(files, expected);
}

#[test]
fn every_fixture_translates_to_toml_with_known_keys_only() {
    let mirror = Mirror::new();
    for fixture in FIXTURES {
        let out = import(&mirror, fixture.file);
        let top: BTreeSet<&str> = out.table.keys().map(String::as_str).collect();
        assert!(
            top.is_subset(&BTreeSet::from(["defaults", "service"])),
            "{}: {top:?}",
            fixture.file
        );
        if let Some(defaults) = out.table.get("defaults") {
            for key in defaults.as_table().unwrap().keys() {
                assert!(
                    SERVICE_KEYS.contains(&key.as_str())
                        && !["name", "mode", "listen", "connect"].contains(&key.as_str()),
                    "{}: [defaults] {key}",
                    fixture.file
                );
            }
        }
        let names: Vec<&str> = out
            .services()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, fixture.services, "{}", fixture.file);
        for service in out.services() {
            for key in service.keys() {
                assert!(
                    SERVICE_KEYS.contains(&key.as_str()),
                    "{}: unknown key {key}",
                    fixture.file
                );
            }
            for key in ["name", "mode", "listen", "connect"] {
                assert!(
                    service.contains_key(key),
                    "{}: a service without {key}",
                    fixture.file
                );
            }
        }
        // Every warning on stderr is also listed at the top of the output.
        for line in out.warning_lines() {
            let listed = format!("# - {}", line.trim_start_matches("dctunnel: "));
            assert!(
                out.toml.contains(&listed),
                "{}: {line} not in the output",
                fixture.file
            );
        }
    }
}

/// Needs `dctunnel check`.
#[test]
fn complete_fixtures_pass_dctunnel_check() {
    let mirror = Mirror::new();
    for fixture in FIXTURES {
        mirror.provision(fixture.file);
        let toml_path = mirror
            .root
            .path()
            .join(fixture.file.replace(".conf", ".toml"));
        let out = run(&[
            "import-stunnel".as_ref(),
            mirror.conf(fixture.file).as_os_str(),
            "--output".as_ref(),
            toml_path.as_os_str(),
        ]);
        assert_eq!(
            out.status.success(),
            !fixture.services.is_empty(),
            "{}: {}",
            fixture.file,
            String::from_utf8_lossy(&out.stderr)
        );
        let check = run(&["check".as_ref(), "--config".as_ref(), toml_path.as_os_str()]);
        let report = format!(
            "{}: dctunnel check said:\n{}{}\non:\n{}",
            fixture.file,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr),
            fs::read_to_string(&toml_path).unwrap()
        );
        assert_eq!(check.status.success(), fixture.check_passes, "{report}");
        let stderr = String::from_utf8_lossy(&check.stderr);
        for reason in fixture.refused_because {
            assert!(stderr.contains(reason), "{reason:?} missing from {report}");
        }
        // One problem line per expected reason: nothing else is wrong.
        let problems = stderr.lines().filter(|l| l.starts_with("  ")).count();
        assert_eq!(problems, fixture.refused_because.len(), "{report}");
    }
}

#[test]
fn server_sections_of_off2_carry_over() {
    let out = import(&Mirror::new(), "off2.conf");
    let defaults = out.defaults();
    assert!(defaults["ca"]
        .as_str()
        .unwrap()
        .ends_with("/etc/stunnel/certs/ca.pem"));
    assert!(defaults["cert"]
        .as_str()
        .unwrap()
        .ends_with("/etc/stunnel/certs/off2-proxy.pem"));
    assert!(defaults["key"]
        .as_str()
        .unwrap()
        .ends_with("/etc/stunnel/private/off2-proxy.key"));
    assert_eq!(defaults["idle_timeout"].as_str(), Some("1h"));

    let mongodb = out.service("mongodb");
    assert_eq!(mongodb["mode"].as_str(), Some("server"));
    assert_eq!(mongodb["listen"].as_str(), Some("0.0.0.0:27017"));
    assert_eq!(mongodb["connect"].as_str(), Some("10.1.0.102:27017"));
    assert_eq!(
        str_list(&mongodb["allow_peers"]),
        ["ovh-stunnel-client.openfoodfacts.org"]
    );
    assert!(!mongodb.contains_key("ca"), "inherited from [defaults]");
    let redis = out.service("redis");
    assert_eq!(
        str_list(&redis["allow_peers"]),
        [
            "ovh-stunnel-client.openfoodfacts.org",
            "off-query.openfoodfacts.org"
        ]
    );
    // A bare port means every address: said in the output and on stderr.
    assert!(out
        .comments_above("mongodb", "listen")
        .contains("listened on every address"));
    assert!(out.stderr.contains(
        "off2.conf:16 [mongodb]: `accept = 27017` (a port alone) listens on every IPv4 address"
    ));
    assert!(!out.stderr.contains("problem:"), "{}", out.stderr);
}

#[test]
fn ovh_client_side_listens_on_its_private_address() {
    let out = import(&Mirror::new(), "ovh-client.conf");
    let mongodb = out.service("mongodb-off2");
    assert_eq!(mongodb["mode"].as_str(), Some("client"));
    assert_eq!(mongodb["listen"].as_str(), Some("10.1.0.113:27017"));
    assert_eq!(
        mongodb["connect"].as_str(),
        Some("proxy2.openfoodfacts.org:27017")
    );
    assert_eq!(
        mongodb["server_name"].as_str(),
        Some("proxy2.openfoodfacts.org")
    );
    assert!(!mongodb.contains_key("allow_public_listen"));
    assert_eq!(out.defaults()["connect_timeout"].as_str(), Some("5s"));
    assert_eq!(out.defaults()["handshake_timeout"].as_str(), Some("20s"));
    assert_eq!(
        out.service("redis-off2")["idle_timeout"].as_str(),
        Some("24h")
    );
    assert!(!out.stderr.contains("problem:"), "{}", out.stderr);
}

#[test]
fn a_client_side_on_every_address_is_refused_until_the_user_chooses() {
    let out = import(&Mirror::new(), "exposed-client.conf");
    let mongodb = out.service("mongodb");
    assert_eq!(mongodb["listen"].as_str(), Some("0.0.0.0:27017"));
    assert!(!mongodb.contains_key("allow_public_listen"));
    let above = out.comments_above("mongodb", "listen");
    assert!(above.contains("CHOOSE AN ADDRESS"), "{above}");
    assert!(above.contains("allow_public_listen = true"), "{above}");
    assert!(
        out.stderr.contains("problem: ") && out.stderr.contains("exposed-client.conf:12 [mongodb]: `accept = 27017` (a port alone) listens on every address in a client-mode section"),
        "{}",
        out.stderr
    );
    // A public address is refused as well.
    let redis = out.service("redis");
    assert_eq!(redis["listen"].as_str(), Some("213.36.253.206:6379"));
    assert!(out
        .comments_above("redis", "listen")
        .contains("public address"));
    assert!(out.stderr.contains("[redis]: `accept = 213.36.253.206:6379`: a client-mode section listens on a public address"));
}

#[test]
fn ipv6_accept_and_connect_are_bracketed() {
    let out = import(&Mirror::new(), "robotoff-ipv6.conf");
    assert_eq!(
        out.service("robotoff")["listen"].as_str(),
        Some("[::]:16000")
    );
    // allow_peers matches certificate names: a checkIP is reported, not copied.
    assert_eq!(
        str_list(&out.service("off-query")["allow_peers"]),
        ["moji-stunnel.openfoodfacts.org"]
    );
    assert!(out.stderr.contains(
        "[off-query]: `checkIP = 2001:db8:4:1::10`: dctunnel identifies clients by the names"
    ));
    let local = out.service("robotoff-local");
    assert_eq!(local["listen"].as_str(), Some("127.0.0.1:16100"));
    assert_eq!(local["connect"].as_str(), Some("[2001:db8:4:1::20]:16000"));
    assert_eq!(
        local["server_name"].as_str(),
        Some("moji-stunnel.openfoodfacts.org")
    );
}

#[test]
fn psk_services_are_listed_one_by_one_with_what_to_do() {
    for (file, client) in [("off2-psk.conf", false), ("ovh-client-psk.conf", true)] {
        let out = import(&Mirror::new(), file);
        for service in ["mongodb", "redis"] {
            let line = out
                .warning_lines()
                .into_iter()
                .find(|l| l.contains(&format!("[{service}]: authenticates with pre-shared keys")))
                .unwrap_or_else(|| panic!("{file}: no PSK warning for {service}:\n{}", out.stderr));
            assert!(line.starts_with("dctunnel: unsupported: "), "{line}");
            assert!(line.contains("PSKsecrets = "), "{line}");
            assert!(
                line.contains("`dctunnel certs issue --name HOST`"),
                "{line}"
            );
            assert!(line.contains("`dctunnel certs keygen`"), "{line}");
            assert!(line.contains("one identity per host"), "{line}");
            let then = if client { "server_name" } else { "allow_peers" };
            assert!(line.contains(then), "{line}");
        }
        assert!(out.toml.contains("It used pre-shared keys"));
    }
}

/// The service names and PSK identities of off2-psk-per-service.conf, one
/// secrets file per service (influxdb's is missing on purpose).
const PER_SERVICE: &[(&str, &[&str])] = &[
    (
        "OffMongodb",
        &["ovh-proxy-mongodb", "moji-off-query-mongodb"],
    ),
    ("OffRedis", &["ovh-proxy-redis"]),
    ("OffInfluxdb", &[]),
];

/// Adds ca, cert and key to every service of `toml`, as a user does first.
fn with_certificates(toml: &str, dir: &Path) -> String {
    let ca = TestCa::new();
    let (cert, key) = ca.host("off2-proxy.openfoodfacts.org");
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("off2.pem"),
        dir.join("off2.key"),
    );
    write_new(&ca_path, &ca.cert_pem);
    write_new(&cert_path, &cert);
    write_private(&key_path, &key);
    toml.replace(
        "\n[[service]]\n",
        &format!(
            "\n[[service]]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca_path.display(),
            cert_path.display(),
            key_path.display()
        ),
    )
}

fn check(path: &Path) -> (bool, String) {
    let out = run(&["check".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// A key per service was the access rule: once ca, cert and key are set,
/// `dctunnel check` still refuses each PSK server service, naming it, until
/// a person lists its clients; the comment offers the identities of that
/// service's own secrets file. Then it passes.
#[test]
fn psk_server_sections_stay_closed_until_their_clients_are_listed() {
    let mirror = Mirror::new();
    let out = import(&mirror, "off2-psk-per-service.conf");
    for (service, identities) in PER_SERVICE {
        let table = out.service(service);
        assert!(
            !table.contains_key("allow_peers"),
            "{service} is open:\n{}",
            out.toml
        );
        let suggested = if identities.is_empty() {
            "# allow_peers = [\"HOST\", ...]".to_owned()
        } else {
            let quoted: Vec<String> = identities.iter().map(|i| format!("\"{i}\"")).collect();
            format!("# allow_peers = [{}]", quoted.join(", "))
        };
        let start = out.toml.find(&format!("name = \"{service}\"")).unwrap();
        let own = &out.toml[start..];
        let own = &own[..own.find("\n\n").unwrap_or(own.len())];
        assert!(own.contains(&suggested), "{suggested} not in\n{own}");
        assert!(
            own.contains("# allow_peers is left out on purpose"),
            "{own}"
        );
        let warning = format!("[{service}]: allow_peers left out: stunnel let in only the holders of this service's pre-shared keys");
        assert!(
            out.stderr.contains(&warning),
            "{warning} not in\n{}",
            out.stderr
        );
    }
    // Each service offers the identities of its own file only.
    assert!(
        out.stderr.contains("the identities in ")
            && out
                .stderr
                .contains("mongodb-psk.txt are ovh-proxy-mongodb, moji-off-query-mongodb;"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("influxdb-psk.txt (cannot read it: "),
        "{}",
        out.stderr
    );

    let dir = mirror.root.path().join("certs");
    let path = mirror.root.path().join("off.toml");
    let toml = with_certificates(&out.toml, &dir);
    fs::write(&path, &toml).unwrap();
    let (passed, said) = check(&path);
    assert!(!passed, "{said}");
    for (service, _) in PER_SERVICE {
        let refusal = format!("service \"{service}\": allow_peers: is required in server mode");
        assert!(said.contains(&refusal), "{refusal} not in {said}");
    }
    assert_eq!(
        said.lines().filter(|l| l.starts_with("  ")).count(),
        3,
        "{said}"
    );

    // The user confirms the names (here the suggested ones, and a host for
    // the file that could not be read).
    let listed = toml
        .replace(
            "# allow_peers = [\"HOST\", ...]",
            "allow_peers = [\"ovh1.openfoodfacts.org\"]",
        )
        .replace("# allow_peers = [", "allow_peers = [");
    fs::write(&path, &listed).unwrap();
    let (passed, said) = check(&path);
    assert!(passed, "{said}\non:\n{listed}");
    assert!(
        said.contains("OffMongodb") && said.contains("ovh-proxy-mongodb"),
        "{said}"
    );
}

/// The keys of the secrets files never appear in what import-stunnel or
/// check print, nor in a message about a malformed secrets file.
#[test]
fn psk_keys_appear_in_no_output() {
    let psk_dir = fixtures_dir().join("psk");
    let mut keys = Vec::new();
    for entry in fs::read_dir(&psk_dir).unwrap() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            keys.push(line.split_once(':').unwrap().1.to_owned());
        }
    }
    assert!(
        keys.len() >= 3,
        "only {} keys found in {}",
        keys.len(),
        psk_dir.display()
    );
    let mirror = Mirror::new();
    let mut said = String::new();
    for fixture in FIXTURES {
        let out = run(&[
            "import-stunnel".as_ref(),
            mirror.conf(fixture.file).as_os_str(),
        ]);
        said.push_str(&String::from_utf8_lossy(&out.stdout));
        said.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let out = import(&mirror, "off2-psk-per-service.conf");
    let path = mirror.root.path().join("off.toml");
    fs::write(
        &path,
        with_certificates(&out.toml, &mirror.root.path().join("certs")),
    )
    .unwrap();
    said.push_str(&check(&path).1);

    // A secrets file with a line that is a key alone: named by its number.
    let key = "Eeph9ahx4eiMo0ohbi6eeSah7ohtiet1";
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("bad-psk.txt"),
        format!("ovh1:{key}\n{key}\n"),
    )
    .unwrap();
    let conf = dir.path().join("off.conf");
    fs::write(&conf, "[redis]\naccept = 6379\nconnect = 10.1.0.122:6379\nciphers = PSK\nPSKsecrets = bad-psk.txt\n").unwrap();
    let out = run(&["import-stunnel".as_ref(), conf.as_os_str()]);
    let bad = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bad.contains("bad-psk.txt (line 2 is not IDENTITY:KEY (stunnel refuses this file))"),
        "{bad}"
    );
    said.push_str(&bad);
    keys.push(key.to_owned());

    assert!(
        said.contains("ovh-proxy-mongodb"),
        "the identities are shown"
    );
    for key in &keys {
        assert!(!said.contains(key.as_str()), "a PSK key was printed: {key}");
    }
}

/// Any other client check stunnel made and dctunnel cannot (hosts.allow,
/// IDENT, e-mail addresses) also leaves allow_peers out, even beside a
/// checkHost.
#[test]
fn server_sections_whose_client_checks_do_not_carry_over_stay_closed() {
    let base = "[mongodb]\naccept = 27017\nconnect = 10.1.0.102:27017\nCAfile = /ca.pem\ncert = /c.pem\nverifyChain = yes\n";
    for (extra, said) in [
        (
            "libwrap = yes\ncheckHost = ovh1.example.org\n",
            "/etc/hosts.allow and /etc/hosts.deny allowed for `mongodb`",
        ),
        (
            "ident = robotoff\n",
            "whose IDENT server answered `robotoff`",
        ),
        (
            "checkEmail = ops@example.org\n",
            "carrying the e-mail address ops@example.org",
        ),
    ] {
        let (table, text, warnings) = translate(&format!("{base}{extra}"));
        let mongodb = services(&table)[0];
        assert!(
            !mongodb.contains_key("allow_peers"),
            "{extra}: open:\n{text}"
        );
        assert!(
            text.contains("# allow_peers is left out on purpose"),
            "{text}"
        );
        assert!(
            warnings.iter().any(|w| w.starts_with("problem: ")
                && w.contains("allow_peers left out")
                && w.contains(said)),
            "{extra}: {warnings:?}"
        );
    }
    let (_, text, _) = translate(&format!(
        "{base}libwrap = yes\ncheckHost = ovh1.example.org\n"
    ));
    assert!(
        text.contains("# allow_peers = [\"ovh1.example.org\"]"),
        "{text}"
    );
    // Without the secrets file read, the library names the file and why.
    let (_, text, _) = translate("[r]\naccept = 6379\nconnect = 10.1.0.122:6379\nPSKsecrets = /etc/stunnel/psk/redis-psk.txt\n");
    assert!(
        text.contains(
            "/etc/stunnel/psk/redis-psk.txt,\n#   not read here (not read (no file access here))"
        ),
        "{text}"
    );
}

/// `retry` only restarts an exec program; `debug` says how to get the same
/// level; a bare port keeps its port in the advice for a client section.
#[test]
fn small_options_get_the_right_advice() {
    let (_, _, warnings) = translate("[r]\nclient = yes\naccept = 127.0.0.1:6379\nconnect = off2.example.org:6379\nretry = yes\n");
    let retry: Vec<&String> = warnings.iter().filter(|w| w.contains("retry")).collect();
    assert_eq!(retry.len(), 1, "{warnings:?}");
    assert!(
        retry[0].starts_with("note: t.conf:5 [r]: `retry = yes`: only used with exec"),
        "{}",
        retry[0]
    );
    assert!(!retry[0].contains("starting a program"), "{}", retry[0]);

    for (value, level) in [
        ("warning", "warning"),
        ("daemon.notice", "notice"),
        ("3", "3"),
        ("LOCAL0.Err", "err"),
    ] {
        let (_, _, warnings) =
            translate(&format!("debug = {value}\n[r]\naccept = 1\nconnect = 2\n"));
        let w = warnings.iter().find(|w| w.contains("`debug = ")).unwrap();
        assert!(w.starts_with("note: "), "{w}");
        assert!(
            w.contains(&format!(
                "run dctunnel with DCTUNNEL_LOG={level} for the same level"
            )),
            "{w}"
        );
    }
    let (_, _, warnings) = translate("debug = loud\n[r]\naccept = 1\nconnect = 2\n");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("problem: t.conf:1: `debug = loud`: unknown level")),
        "{warnings:?}"
    );

    let (_, _, warnings) =
        translate("[redis]\nclient = yes\naccept = 6379\nconnect = off2.example.org:6379\n");
    let w = warnings
        .iter()
        .find(|w| w.contains("listens on every address"))
        .unwrap();
    assert!(
        w.contains("listen = \"10.1.0.113:6379\"") && w.contains("\"127.0.0.1:6379\""),
        "{w}"
    );
    assert!(!w.contains("27017"), "{w}");
}

#[test]
fn process_options_point_to_the_systemd_unit() {
    let out = import(&Mirror::new(), "off2-psk.conf");
    for (line, option) in [
        (6, "foreground = yes"),
        (7, "setuid = stunnel4"),
        (8, "setgid = stunnel4"),
        (9, "pid = "),
    ] {
        let warning = out
            .warning_lines()
            .into_iter()
            .find(|l| l.contains(&format!("off2-psk.conf:{line}: `{option}")))
            .unwrap_or_else(|| panic!("no warning for line {line}:\n{}", out.stderr));
        assert!(warning.contains("systemd/dctunnel@.service"), "{warning}");
    }
}

#[test]
fn several_connects_become_an_ordered_list() {
    let out = import(&Mirror::new(), "smtp-pmg-client.conf");
    let smtp = out.service("smtp-pmg");
    assert_eq!(
        str_list(&smtp["connect"]),
        [
            "pmg.openfoodfacts.org:2525",
            "pmg-backup.openfoodfacts.org:2525"
        ]
    );
    assert_eq!(smtp["connect_timeout"].as_str(), Some("10s"));
    assert!(out.stderr.contains("`TIMEOUTclose = 0`"));
    assert!(out.stderr.contains("`delay = yes`"));
}

#[test]
fn crl_and_timeouts_of_the_smtp_server_side() {
    let out = import(&Mirror::new(), "smtp-pmg-server.conf");
    let defaults = out.defaults();
    assert!(str_list(&defaults["crl"])[0].ends_with("/etc/stunnel/certs/crl.pem"));
    assert_eq!(defaults["handshake_timeout"].as_str(), Some("30s"));
    assert_eq!(defaults["idle_timeout"].as_str(), Some("10m"));
    let smtp = out.service("smtp");
    assert_eq!(smtp["listen"].as_str(), Some("146.59.148.140:2525"));
    assert_eq!(
        str_list(&smtp["allow_peers"]),
        ["off1.openfoodfacts.org", "off2.openfoodfacts.org"]
    );
}

#[test]
fn included_directories_are_read_in_order() {
    let out = import(&Mirror::new(), "includes.conf");
    assert_eq!(out.service("mongodb")["mode"].as_str(), Some("client"));
    assert_eq!(
        out.service("redis")["listen"].as_str(),
        Some("10.1.0.113:6379")
    );
    assert!(out.defaults()["cert"]
        .as_str()
        .unwrap()
        .ends_with("ovh1-tunnels.pem"));
    assert!(
        out.stderr
            .contains("conf.d/00-global.conf:3: `setuid = stunnel4`"),
        "{}",
        out.stderr
    );
    assert!(out.toml.contains("and the 3 file(s) it includes"));
}

#[test]
fn windows_files_are_read_like_stunnel_reads_them() {
    let out = import(&Mirror::new(), "crlf-bom.conf");
    let defaults = out.defaults();
    assert_eq!(
        defaults["cert"], defaults["key"],
        "the key defaults to the cert file"
    );
    assert_eq!(defaults["tls12"].as_bool(), Some(true));
    let app = out.service("legacy-app");
    assert_eq!(app["listen"].as_str(), Some("10.1.0.50:8443"));
    assert_eq!(
        str_list(&app["allow_peers"]),
        ["legacy-client.openfoodfacts.org"]
    );
}

#[test]
fn problems_of_the_stunnel_file_are_reported_not_copied() {
    let out = import(&Mirror::new(), "problems.conf");
    let problems: Vec<&str> = out
        .warning_lines()
        .into_iter()
        .filter(|l| l.starts_with("dctunnel: problem: "))
        .collect();
    let expect = [
        "problems.conf:18 [mongodb]: a second section named [mongodb] (the first is at ",
        "problems.conf:24 [mongodb-replica]: listens where section [mongodb] (",
        "problems.conf:30 [postgres]: `accept = 5432 ; PostgreSQL`: the port `5432 ; PostgreSQL` is not a number from 1 to 65535 (stunnel has no comments after a value)",
        "problems.conf:42 [smtp-starttls]: `foreground = no`: a global option inside a section",
        "problems.conf:45 [smtp-starttls]: `checkHosts = off1.openfoodfacts.org`: unknown option",
        "problems.conf:38 [smtp-starttls]: allow_peers left out: stunnel let in only the client addresses /etc/hosts.allow and /etc/hosts.deny allowed for `smtp-starttls` (libwrap = yes)",
    ];
    for e in expect {
        assert!(
            problems.iter().any(|p| p.contains(e)),
            "missing {e:?} in:\n{}",
            problems.join("\n")
        );
    }
    assert_eq!(problems.len(), expect.len(), "{}", problems.join("\n"));
    // The duplicate name is renamed; the shared address is written commented out.
    assert_eq!(
        out.service("mongodb-2")["listen"].as_str(),
        Some("10.1.0.12:27018")
    );
    assert!(out
        .toml
        .contains("# NOT ENABLED: listens where section [mongodb]"));
    assert!(out.toml.contains("# name = \"mongodb-replica\""));
    // Unsupported features say what to do instead.
    for (option, advice) in [
        (
            "`exec = /usr/sbin/imapd`",
            "run the program as a service listening on 127.0.0.1",
        ),
        ("`protocol = smtp`", "no STARTTLS exchange is needed"),
        ("`engine = pkcs11`", "PEM files"),
        ("`CApath = /etc/ssl/certs`", "concatenate"),
        ("`libwrap = yes`", "allow_sources"),
        (
            "`sni = mongodb:db.openfoodfacts.org`",
            "listen address of its own",
        ),
        ("`OCSPaia = yes`", "CRL"),
    ] {
        let line = out.warning_lines().into_iter().find(|l| l.contains(option));
        let line = line.unwrap_or_else(|| panic!("no warning for {option}:\n{}", out.stderr));
        assert!(line.contains(advice), "{line}");
    }
    assert!(
        !out.stderr.contains("123456") && !out.toml.contains("123456"),
        "engine PIN repeated"
    );
}

#[test]
fn an_inetd_mode_file_translates_to_no_service() {
    let out = import(&Mirror::new(), "inetd.conf");
    assert!(out.services().is_empty());
    assert!(out.stderr.contains("problem: no [section]"));
    assert!(out.toml.contains("No service could be translated"));
    // import() checked that it exits non-zero; the last line says why.
    assert!(
        out.stderr
            .trim_end()
            .ends_with("inetd.conf: see the problems above")
            && out
                .stderr
                .contains("dctunnel: no service could be translated from "),
        "{}",
        out.stderr
    );
}

#[test]
fn a_file_whose_every_section_is_disabled_fails_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exec.conf");
    fs::write(
        &path,
        "[backup]\naccept = 127.0.0.1:873\nexec = /usr/bin/rsync\nexecArgs = rsync --server\n",
    )
    .unwrap();
    let out = run(&["import-stunnel".as_ref(), path.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("# NOT ENABLED: it starts a program (exec)"),
        "{stdout}"
    );
    assert!(toml::from_str::<toml::Table>(&stdout).is_ok());
}

#[test]
fn a_syntax_error_names_the_file_and_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.conf");
    fs::write(&path, "; ok\n[mongodb]\naccept 27017\n").unwrap();
    let out = run(&["import-stunnel".as_ref(), path.as_os_str()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("bad.conf:3: `accept 27017`: no '=' found"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_or_include_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "import-stunnel".as_ref(),
        dir.path().join("nope.conf").as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    let path = dir.path().join("main.conf");
    fs::write(&path, "include = conf.d\n").unwrap();
    let out = run(&["import-stunnel".as_ref(), path.as_os_str()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("main.conf:1: cannot include directory `conf.d`: "),
        "{stderr}"
    );
}

#[test]
fn output_flag_writes_the_file_instead_of_stdout() {
    let mirror = Mirror::new();
    let target = mirror.root.path().join("out.toml");
    let out = run(&[
        "import-stunnel".as_ref(),
        mirror.conf("off2.conf").as_os_str(),
        "-o".as_ref(),
        target.as_os_str(),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let written: toml::Table = toml::from_str(&fs::read_to_string(target).unwrap()).unwrap();
    assert_eq!(written["service"].as_array().unwrap().len(), 2);
}

#[test]
fn the_library_reports_severities_in_order() {
    let text = "foreground = yes\n[a]\nclient = yes\naccept = 2000\nconnect = b:1\nbogus = 1\n";
    let config = stunnel::parse(text, "t.conf", &mut stunnel::NoIncludes).unwrap();
    let t = stunnel::translate(&config);
    let severities: Vec<Severity> = t.warnings.iter().map(|w| w.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort();
    assert_eq!(severities, sorted);
    assert_eq!(t.warnings[0].severity, Severity::Problem);
    assert_eq!(t.warnings[0].section.as_deref(), Some("a"));
    assert!(
        t.warnings.iter().all(|w| !w.advice.is_empty()),
        "{:?}",
        t.warnings
    );
}

// ----- the library on small inputs -------------------------------------------

/// Parses and translates `text`; returns the output as TOML, the output text
/// and the warnings, one string each.
fn translate(text: &str) -> (toml::Table, String, Vec<String>) {
    let config = stunnel::parse(text, "t.conf", &mut stunnel::NoIncludes).unwrap();
    let t = stunnel::translate(&config);
    let table = toml::from_str(&t.toml).unwrap_or_else(|e| panic!("{e}\n{}", t.toml));
    let warnings = t.warnings.iter().map(ToString::to_string).collect();
    (table, t.toml, warnings)
}

fn services(table: &toml::Table) -> Vec<&toml::Table> {
    table.get("service").map_or(Vec::new(), |s| {
        s.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_table().unwrap())
            .collect()
    })
}

const TLS: &str = "CAfile = /ca.pem\ncert = /c.pem\nkey = /k.pem\nverifyChain = yes\n";

#[test]
fn several_accepts_become_one_service_each() {
    let (table, _, _) = translate(&format!(
        "{TLS}[db]\naccept = 10.0.0.1:1\naccept = 10.0.0.2:1\nconnect = 10.0.0.9:1\ncheckHost = a.example\n"
    ));
    let s = services(&table);
    let pairs: Vec<(&str, &str)> = s
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["listen"].as_str().unwrap()))
        .collect();
    assert_eq!(pairs, [("db", "10.0.0.1:1"), ("db-2", "10.0.0.2:1")]);
}

#[test]
fn timeouts_become_durations_and_zero_is_dropped() {
    let (table, _, warnings) = translate(&format!(
        "{TLS}TIMEOUTidle = 43200\n[a]\naccept = 10.0.0.1:1\nconnect = b:1\ncheckHost = c\n\
         TIMEOUTconnect = 90\nTIMEOUTbusy = 0\n[b]\naccept = 10.0.0.1:2\nconnect = b:1\n\
         checkHost = c\nTIMEOUTidle = soon\n"
    ));
    assert_eq!(table["defaults"]["idle_timeout"].as_str(), Some("12h"));
    let s = services(&table);
    assert_eq!(s[0]["connect_timeout"].as_str(), Some("90s"));
    assert!(!s[0].contains_key("handshake_timeout"));
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("note: t.conf:11 [a]: `TIMEOUTbusy = 0`")),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("problem: t.conf:16 [b]: `TIMEOUTidle = soon`")),
        "{warnings:#?}"
    );
}

#[test]
fn verify_peer_leaves_the_choice_of_pins_to_the_user() {
    let (table, toml, warnings) = translate(
        "CAfile = /peers.pem\ncert = /c.pem\nkey = /k.pem\nverifyPeer = yes\n[a]\naccept = 10.0.0.1:1\nconnect = b:1\n",
    );
    assert!(
        !services(&table)[0].contains_key("allow_peers"),
        "check must refuse until pins are set"
    );
    let defaults = table["defaults"].as_table().unwrap();
    assert!(
        !defaults.contains_key("ca"),
        "CAfile held peer certificates, not a CA: {toml}"
    );
    assert!(toml.contains("# peer_pins = [\"sha256/...\"]"), "{toml}");
    assert!(warnings
        .iter()
        .any(|w| w.contains("`verifyPeer = yes`") && w.contains("peer_pins")));
}

#[test]
fn a_server_checked_by_ip_only_waits_for_names() {
    let (table, toml, warnings) = translate(&format!(
        "{TLS}[a]\naccept = 10.0.0.1:1\nconnect = b:1\ncheckIP = 10.0.0.7\n"
    ));
    assert!(!services(&table)[0].contains_key("allow_peers"));
    assert!(
        toml.contains("the certificate names of the clients checkIP named: 10.0.0.7"),
        "{toml}"
    );
    assert!(warnings
        .iter()
        .any(|w| w.starts_with("unsupported: t.conf:8 [a]: `checkIP = 10.0.0.7`")));
}

#[test]
fn a_client_checks_the_first_name_and_reports_the_others() {
    let (table, _, warnings) = translate(&format!(
        "{TLS}client = yes\n[a]\naccept = 127.0.0.1:1\nconnect = 10.0.0.9:1\nsni = front.example\n\
         checkHost = back.example\ncheckHost = other.example\n"
    ));
    assert_eq!(
        services(&table)[0]["server_name"].as_str(),
        Some("back.example")
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("dropped here: other.example")),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`sni = front.example` differs")),
        "{warnings:#?}"
    );
}

#[test]
fn an_unverified_stunnel_service_is_reported() {
    let (_, _, warnings) = translate(
        "cert = /c.pem\nkey = /k.pem\n[s]\naccept = 10.0.0.1:1\nconnect = b:1\n[c]\nclient = yes\naccept = 127.0.0.1:2\nconnect = d.example:1\n",
    );
    assert!(warnings
        .iter()
        .any(|w| w.contains("[s]: stunnel did not ask clients for a certificate")));
    assert!(warnings.iter().any(|w| w
        .contains("[c]: stunnel did not verify the server's certificate")
        && w.contains("`d.example`")));
    assert!(warnings.iter().any(|w| w.contains("[s]: no CAfile")));
}

#[test]
fn tls_versions_and_resumption_carry_over() {
    let (table, _, warnings) = translate(&format!(
        "{TLS}sslVersionMax = TLSv1.2\nsessionResume = no\n[a]\naccept = 10.0.0.1:1\nconnect = b:1\n\
         checkHost = c\n[old]\naccept = 10.0.0.1:2\nconnect = b:1\ncheckHost = c\nsslVersion = TLSv1\n"
    ));
    assert_eq!(table["defaults"]["tls12"].as_bool(), Some(true));
    assert_eq!(table["defaults"]["tls_resumption"].as_bool(), Some(false));
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("problem: t.conf:15 [old]: `sslVersion = TLSv1`")),
        "{warnings:#?}"
    );
}

#[test]
fn odd_section_names_become_valid_unique_names() {
    let (table, _, _) = translate(&format!(
        "{TLS}[mongo db]\naccept = 10.0.0.1:1\nconnect = b:1\ncheckHost = c\n\
         [mongo/db]\naccept = 10.0.0.1:2\nconnect = b:1\ncheckHost = c\n\
         []\naccept = 10.0.0.1:3\nconnect = b:1\ncheckHost = c\n"
    ));
    let names: Vec<&str> = services(&table)
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mongo-db", "mongo-db-2", "service"]);
}

#[test]
fn values_that_need_escaping_stay_valid_toml() {
    let (table, _, _) = translate(
        "cert = /certs/\"quoted\"\\dir.pem\nkey = /k\tey.pem\nCAfile = /é.pem\n[a]\naccept = 10.0.0.1:1\nconnect = b:1\n",
    );
    assert_eq!(
        table["defaults"]["cert"].as_str(),
        Some("/certs/\"quoted\"\\dir.pem")
    );
    assert_eq!(table["defaults"]["key"].as_str(), Some("/k\tey.pem"));
    assert_eq!(table["defaults"]["ca"].as_str(), Some("/é.pem"));
}

// ----- bounded fuzzing -------------------------------------------------------

/// xorshift64*: small, seeded, good enough to shuffle inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const TOKENS: &[&str] = &[
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "=",
    " = ",
    "[",
    "]",
    "[x]\n",
    "[]\n",
    ";",
    "#",
    ":",
    "::",
    "\u{feff}",
    "\0",
    "é",
    "✓",
    "\"",
    "\\",
    "'",
    "*",
    "/",
    "accept",
    "connect",
    "client",
    "cert",
    "key",
    "CAfile",
    "CRLfile",
    "verifyChain",
    "verifyPeer",
    "verify",
    "checkHost",
    "checkIP",
    "sni",
    "PSKsecrets",
    "PSKidentity",
    "ciphers",
    "TIMEOUTidle",
    "TIMEOUTbusy",
    "TIMEOUTconnect",
    "TIMEOUTclose",
    "sslVersion",
    "sslVersionMax",
    "failover",
    "delay",
    "exec",
    "protocol",
    "include",
    "include = d\n",
    "yes",
    "no",
    "rr",
    "prio",
    "PSK",
    "TLSv1.2",
    "TLSv1",
    "27017",
    "0",
    "65536",
    "99999999999999999999",
    ":::16000",
    "0.0.0.0:1",
    "213.36.253.206:25",
    "10.1.0.113:27017",
    "[::1]:80",
    "fe80::1%eth0:1",
    "localhost:2",
    "a b:3",
    "/run/s.sock",
    "mongodb",
    "setuid",
    "foreground",
    "engineCtrl",
    "2",
    "3",
    "4",
];

/// Returns, for any directory, a few files made from the seeds, sometimes
/// one that includes the directory again; sometimes an error.
struct FuzzIncludes {
    rng: Rng,
    seeds: Vec<String>,
}

impl IncludeResolver for FuzzIncludes {
    fn include(&mut self, dir: &str) -> io::Result<Vec<SourceFile>> {
        if self.rng.below(5) == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, "gone"));
        }
        let count = self.rng.below(3);
        Ok((0..count)
            .map(|i| {
                let seed = self.seeds[self.rng.below(self.seeds.len())].clone();
                SourceFile {
                    name: format!("{dir}/{i:02}.conf"),
                    text: mutate(&mut self.rng, &seed),
                }
            })
            .collect())
    }
}

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for _ in 0..=rng.below(8) {
        let at = rng.below(chars.len() + 1);
        match rng.below(6) {
            0 | 1 => {
                let token: Vec<char> = rng.pick(TOKENS).chars().collect();
                chars.splice(at..at, token);
            }
            2 => {
                let end = (at + rng.below(40)).min(chars.len());
                chars.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(80)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                let to = rng.below(chars.len() + 1);
                chars.splice(to..to, copy);
            }
            4 => {
                if at < chars.len() {
                    chars[at] = char::from_u32(rng.below(0x3000) as u32).unwrap_or('?');
                }
            }
            _ => {
                let line: String = (0..rng.below(6)).map(|_| rng.pick(TOKENS)).collect();
                chars.splice(at..at, line.chars());
            }
        }
    }
    chars.into_iter().collect()
}

/// Thousands of mutated stunnel files: parsing never panics, and whatever
/// parses translates into valid TOML whose services all have a name.
#[test]
fn mutated_stunnel_files_never_panic_and_always_give_toml() {
    let mut seeds: Vec<String> = fixture_files()
        .iter()
        .map(|f| String::from_utf8_lossy(&fs::read(fixtures_dir().join(f)).unwrap()).into_owned())
        .collect();
    seeds.push(String::new());
    let mut rng = Rng(0x5eed_dc7e_0001);
    let mut includes = FuzzIncludes {
        rng: Rng(7),
        seeds: seeds.clone(),
    };
    let (mut parsed, mut failed) = (0, 0);
    for round in 0..5000 {
        let seed = &seeds[rng.below(seeds.len())];
        let text = if round % 10 == 0 {
            (0..rng.below(200)).map(|_| rng.pick(TOKENS)).collect()
        } else {
            mutate(&mut rng, seed)
        };
        match stunnel::parse(&text, "fuzz.conf", &mut includes) {
            Ok(config) => {
                parsed += 1;
                let t = stunnel::translate(&config);
                let table: toml::Table = toml::from_str(&t.toml).unwrap_or_else(|e| {
                    panic!(
                        "round {round}: not TOML: {e}\ninput:\n{text:?}\noutput:\n{}",
                        t.toml
                    )
                });
                if let Some(services) = table.get("service") {
                    for s in services.as_array().unwrap() {
                        assert!(
                            s.get("name").is_some_and(|n| n.is_str()),
                            "round {round}: {text:?}"
                        );
                    }
                }
            }
            Err(e) => {
                failed += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // The run must exercise both paths to mean anything.
    assert!(
        parsed > 500 && failed > 100,
        "parsed {parsed}, failed {failed}"
    );
}
