//! TLS in front of the benchmark's plain-text endpoints, as the functions
//! meet it on AWS.
//!
//! Per run, `openssl` makes a chain shaped like an AWS endpoint's: a root,
//! an intermediate and a leaf for `127.0.0.1`, all RSA 2048 (as Amazon Root
//! CA 1 → Amazon RSA 2048 M0x → the service's certificate), and the server
//! sends leaf + intermediate. The functions are told to trust the root the
//! way a deployment trusts a custom CA: `SSL_CERT_FILE`, which
//! rustls-native-certs reads instead of the system store, here the
//! system's bundle with the root appended, so init still parses a full
//! bundle as it does on `provided.al2023`. The AWS SDK's default HTTPS
//! client and courier-aws's JWKS client load their roots that way.
//!
//! Redis is the exception: the redis crate is built with
//! `tls-rustls-webpki-roots`, so it trusts only the roots compiled into it
//! and no CA made here can be trusted without changing the binary (and its
//! `#insecure` mode needs a feature the build does not have). Redis stays
//! plain text in these runs.
//!
//! [`TlsProxy`] terminates TLS and copies bytes to the upstream address:
//! the function does the handshake and the encryption, as on AWS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, ensure};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The system's roots, as on Debian and `provided.al2023`'s equivalent.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A certificate chain made for this run and the files the child reads.
pub struct Tls {
    dir: PathBuf,
    /// System roots + this run's root: the child's `SSL_CERT_FILE`.
    pub bundle: PathBuf,
    acceptor: TlsAcceptor,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Tls {
    /// Makes the chain with `openssl` in a fresh temporary folder.
    pub async fn generate() -> anyhow::Result<Tls> {
        let dir = std::env::temp_dir().join(format!(
            "courier-bench-tls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("ext.cnf"),
            "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
             [leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        let steps = [
            certificate(&dir, "root", None, "ca"),
            certificate(&dir, "int", Some("root"), "ca"),
            certificate(&dir, "leaf", Some("int"), "leaf"),
        ]
        .concat();
        for step in steps {
            let out = tokio::process::Command::new("openssl")
                .args(step.split_whitespace())
                .output()
                .await
                .context("running openssl (needed for the TLS endpoints)")?;
            ensure!(
                out.status.success(),
                "openssl {step}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bundle = dir.join("bundle.pem");
        let mut roots = std::fs::read(SYSTEM_BUNDLE).unwrap_or_default();
        roots.extend(std::fs::read(dir.join("root.pem"))?);
        std::fs::write(&bundle, roots)?;

        let mut chain = read_certs(&dir.join("leaf.pem"))?;
        chain.extend(read_certs(&dir.join("int.pem"))?);
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).context("leaf key")?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        Ok(Tls {
            dir,
            bundle,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// A TLS listener on a free loopback port in front of `upstream`.
    pub async fn proxy(&self, upstream: SocketAddr) -> anyhow::Result<TlsProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = self.acceptor.clone();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let _ = relay(acceptor, socket, upstream, &counted).await;
                });
            }
        });
        Ok(TlsProxy {
            addr,
            handshakes,
            task,
        })
    }
}

async fn relay(
    acceptor: TlsAcceptor,
    socket: TcpStream,
    upstream: SocketAddr,
    handshakes: &AtomicUsize,
) -> anyhow::Result<()> {
    socket.set_nodelay(true)?;
    let mut tls = acceptor.accept(socket).await?;
    handshakes.fetch_add(1, Ordering::Relaxed);
    let mut plain = TcpStream::connect(upstream).await?;
    plain.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut tls, &mut plain).await?;
    Ok(())
}

/// The `openssl` command lines that make `{name}.key` and `{name}.pem`
/// (CN = `courier-bench-{name}`, RSA 2048, the `extensions` section of
/// `ext.cnf`), signed by `{issuer}.key` or self-signed. Paths under the
/// temporary folder have no spaces.
fn certificate(dir: &Path, name: &str, issuer: Option<&str>, extensions: &str) -> Vec<String> {
    let f = |file: String| dir.join(file).display().to_string();
    let (key, pem, csr, ext) = (
        f(format!("{name}.key")),
        f(format!("{name}.pem")),
        f(format!("{name}.csr")),
        f("ext.cnf".into()),
    );
    let new_key = format!("-newkey rsa:2048 -nodes -subj /CN=courier-bench-{name} -keyout {key}");
    match issuer {
        None => vec![format!(
            "req -x509 {new_key} -days 2 -out {pem} -config {ext} -extensions {extensions}"
        )],
        Some(issuer) => vec![
            format!("req {new_key} -out {csr}"),
            format!(
                "x509 -req -in {csr} -CA {} -CAkey {} -CAcreateserial -days 2 -extfile {ext} -extensions {extensions} -out {pem}",
                f(format!("{issuer}.pem")),
                f(format!("{issuer}.key"))
            ),
        ],
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| path.display().to_string())?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| path.display().to_string())
}

/// A running TLS proxy; stops when dropped.
pub struct TlsProxy {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Handshakes completed so far: proof that a client spoke TLS to it.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of an `http://host:port[/…]` endpoint.
pub fn upstream_of(endpoint: &str) -> anyhow::Result<SocketAddr> {
    let rest = endpoint
        .strip_prefix("http://")
        .with_context(|| format!("{endpoint}: not http://"))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port
        .parse()
        .with_context(|| format!("{endpoint}: not an IP address and port"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A client trusting only the run's root reaches the upstream through
    /// the proxy, by IP address; one trusting the system roots alone is
    /// refused (the chain is this run's, not a public one).
    #[tokio::test]
    async fn the_proxy_s_chain_verifies_against_the_run_s_root_only() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let tls = Tls::generate().await.unwrap();
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = tls.proxy(upstream).await.unwrap();
        let connect = |roots: rustls::RootCertStore| {
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let addr = proxy.addr;
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
            }
        };
        let mut ours = rustls::RootCertStore::empty();
        for c in read_certs(&tls.dir.join("root.pem")).unwrap() {
            ours.add(c).unwrap();
        }
        let mut stream = connect(ours).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        assert_eq!(proxy.handshakes(), 1);

        let mut system = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(SYSTEM_BUNDLE)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = system.add(c);
        }
        assert!(connect(system).await.is_err());
        // The bundle the functions read holds the system's roots and ours.
        let bundle = read_certs(&tls.bundle).unwrap();
        assert!(bundle.len() > 1);
    }

    #[test]
    fn upstream_is_the_address_of_a_plain_endpoint() {
        assert_eq!(
            upstream_of("http://127.0.0.1:4566/local").unwrap(),
            "127.0.0.1:4566".parse().unwrap()
        );
        assert!(upstream_of("https://127.0.0.1:1").is_err());
        assert!(upstream_of("http://localhost:1").is_err());
    }
}
