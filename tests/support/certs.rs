//! Certificates for the TLS tests, made fresh in a directory: a CA, server certificates for
//! the addresses a test listens on, client certificates, and the bad ones (expired, from
//! another CA). Keys are written `0600`, as the relay and libpq require.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, SanType, SerialNumber,
};

/// A certificate authority that signs into one directory.
pub struct TestCa {
    dir: PathBuf,
    cert: Certificate,
    key: KeyPair,
    /// Its certificate file (PEM).
    pub cert_file: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, `0600`).
    pub key: PathBuf,
    /// The serial as `openssl x509 -serial` prints it.
    pub serial: String,
}

/// How a leaf certificate differs from a good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from a year ago for a hundred years.
    Current,
    /// Valid only in 2020.
    Expired,
}

impl TestCa {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        fs::create_dir_all(dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}.crt"));
        fs::write(&cert_file, cert.pem()).unwrap();
        TestCa {
            dir: dir.to_owned(),
            cert,
            key,
            cert_file,
        }
    }

    /// A server certificate for `hosts` (names or addresses) with common name `cn`.
    pub fn server(&self, file: &str, cn: &str, hosts: &[&str], serial: u64) -> Issued {
        self.leaf(file, cn, hosts, serial, Validity::Current)
    }

    /// A client certificate whose common name is `cn`.
    pub fn client(&self, file: &str, cn: &str, validity: Validity) -> Issued {
        self.leaf(file, cn, &[], 1000 + u64::from(file.len() as u8), validity)
    }

    fn leaf(&self, file: &str, cn: &str, hosts: &[&str], serial: u64, v: Validity) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*h).try_into().unwrap()),
            })
            .collect();
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        match v {
            Validity::Current => {
                params.not_before = rcgen::date_time_ymd(2025, 1, 1);
                params.not_after = rcgen::date_time_ymd(2125, 1, 1);
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = self.dir.join(format!("{file}.crt"));
        let key_path = self.dir.join(format!("{file}.key"));
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
        let serial = serial
            .to_be_bytes()
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02X}"))
            .collect();
        Issued {
            cert: cert_path,
            key: key_path,
            serial,
        }
    }
}

/// The serial of the certificate a TLS server at `host:port` presents after an SSLRequest, as
/// `openssl s_client -starttls postgres` shows it.
pub fn served_serial(host: &str, port: u16) -> Option<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -starttls postgres -connect {host}:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().strip_prefix("serial=").map(str::to_owned)
}
