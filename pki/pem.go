package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// PEM block types.
const (
	pemCert = "CERTIFICATE"
	pemKey  = "PRIVATE KEY"
	pemCSR  = "CERTIFICATE REQUEST"
)

// File names used by SaveCA/LoadCA and SaveLeaf/LoadLeaf.
const (
	CACertFile = "ca.pem"     // the CA's certificate
	CAKeyFile  = "ca-key.pem" // the CA's private key (mode 0600)
	RootFile   = "root.pem"   // the installation's root certificate
	certSuffix = ".pem"       // <name>.pem: a leaf's chain
	keySuffix  = "-key.pem"   // <name>-key.pem: a leaf's key (mode 0600)
)

func encodePEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// EncodeCertsPEM encodes DER certificates as concatenated PEM blocks.
func EncodeCertsPEM(ders ...[]byte) []byte {
	var b bytes.Buffer
	for _, d := range ders {
		b.Write(encodePEM(pemCert, d))
	}
	return b.Bytes()
}

// ParseCertsPEM parses one or more PEM certificates. Any other block type
// or trailing garbage is an error.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := bytes.TrimSpace(data)
	for len(rest) > 0 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("certificate PEM: block %d: not PEM", len(certs)+1)
		}
		if blk.Type != pemCert {
			return nil, fmt.Errorf("certificate PEM: block %d: type %q, want %q", len(certs)+1, blk.Type, pemCert)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate PEM: block %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
		rest = bytes.TrimSpace(rest)
	}
	if len(certs) == 0 {
		return nil, errors.New("certificate PEM: no certificate found")
	}
	return certs, nil
}

// EncodeKeyPEM encodes a private key as a PKCS#8 "PRIVATE KEY" PEM block.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("private key PEM: %w", err)
	}
	return encodePEM(pemKey, der), nil
}

// ParseKeyPEM parses a PKCS#8 "PRIVATE KEY" PEM block (as written by
// EncodeKeyPEM) into a signer.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(data)
	if blk == nil {
		return nil, errors.New("private key PEM: not PEM")
	}
	if blk.Type != pemKey {
		return nil, fmt.Errorf("private key PEM: type %q, want %q", blk.Type, pemKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("private key PEM: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key PEM: %T is not a signer", k)
	}
	return s, nil
}

// ParseCSRPEM parses a PEM "CERTIFICATE REQUEST". It does not check the
// signature (IssueFromCSR does).
func ParseCSRPEM(data []byte) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(data)
	if blk == nil {
		return nil, errors.New("CSR PEM: not PEM")
	}
	if blk.Type != pemCSR {
		return nil, fmt.Errorf("CSR PEM: type %q, want %q", blk.Type, pemCSR)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CSR PEM: %w", err)
	}
	return csr, nil
}

// ChainPEM returns the leaf's chain (leaf first) as PEM.
func (l *Leaf) ChainPEM() []byte { return EncodeCertsPEM(l.Chain...) }

// WriteFileAtomic writes data to path with mode perm through a temporary
// file and a rename, so readers never see a partial file. Keys and other
// secret files (such as `meridian dev`'s tokens) are written with it.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// SaveCA writes ca to dir (created with mode 0700 if missing): ca.pem,
// ca-key.pem (mode 0600) and root.pem.
func SaveCA(dir string, ca *CA) error {
	if ca == nil || ca.Cert == nil || ca.Key == nil || ca.Root == nil {
		return errors.New("pki: save CA: incomplete CA (certificate, key and root are required)")
	}
	keyPEM, err := EncodeKeyPEM(ca.Key)
	if err != nil {
		return fmt.Errorf("pki: save CA to %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: save CA: %w", err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{CAKeyFile, keyPEM, 0o600},
		{CACertFile, EncodeCertsPEM(ca.Cert.Raw), 0o644},
		{RootFile, EncodeCertsPEM(ca.Root.Raw), 0o644},
	}
	for _, f := range files {
		if err := WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("pki: save CA: %w", err)
		}
	}
	return nil
}

// LoadCA reads a CA written by SaveCA and checks it: the key matches the
// certificate, the certificate is a CA signed by the root (or is the
// root), and its role (trust domain, region) is readable.
func LoadCA(dir string) (*CA, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("pki: load CA: %w", err)
		}
		return b, nil
	}
	certPEM, err := read(CACertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(CAKeyFile)
	if err != nil {
		return nil, err
	}
	rootPEM, err := read(RootFile)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %s: %w", CACertFile, err)
	}
	roots, err := ParseCertsPEM(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %s: %w", RootFile, err)
	}
	if len(certs) != 1 || len(roots) != 1 {
		return nil, fmt.Errorf("pki: load CA: %s and %s must hold one certificate each", CACertFile, RootFile)
	}
	cert, root := certs[0], roots[0]
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %s: %w", CAKeyFile, err)
	}
	if err := keyMatches(cert, key); err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	if !cert.IsCA || !root.IsCA {
		return nil, errors.New("pki: load CA: certificate is not a CA")
	}
	td, region, err := caRole(cert)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	rootTD, rootRegion, err := caRole(root)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %s: %w", RootFile, err)
	}
	if rootRegion != "" || rootTD != td {
		return nil, fmt.Errorf("pki: load CA: %s is not the root of trust domain %q", RootFile, td)
	}
	if err := cert.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("pki: load CA: %s is not signed by %s: %w", CACertFile, RootFile, err)
	}
	ca := &CA{Cert: cert, Key: key, Root: root, TrustDomain: td, Region: region}
	if region == "" {
		if !cert.Equal(root) {
			return nil, fmt.Errorf("pki: load CA: root CA but %s differs from %s", CACertFile, RootFile)
		}
		ca.Root = cert
	} else {
		ca.Chain = [][]byte{cert.Raw}
	}
	return ca, nil
}

func leafPaths(dir, name string) (string, string, error) {
	if err := validateSegment(name); err != nil {
		return "", "", fmt.Errorf("leaf name: %w", err)
	}
	return filepath.Join(dir, name+certSuffix), filepath.Join(dir, name+keySuffix), nil
}

// SaveLeaf writes a leaf to dir as <name>.pem (chain) and <name>-key.pem
// (mode 0600). Each file is replaced atomically; the key is written first.
func SaveLeaf(dir, name string, leaf *Leaf) error {
	certPath, keyPath, err := leafPaths(dir, name)
	if err != nil {
		return fmt.Errorf("pki: save leaf: %w", err)
	}
	if leaf == nil || leaf.Cert == nil || leaf.Key == nil {
		return fmt.Errorf("pki: save leaf %q: certificate and key are required", name)
	}
	keyPEM, err := EncodeKeyPEM(leaf.Key)
	if err != nil {
		return fmt.Errorf("pki: save leaf %q: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: save leaf %q: %w", name, err)
	}
	if err := WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("pki: save leaf %q: %w", name, err)
	}
	if err := WriteFileAtomic(certPath, leaf.ChainPEM(), 0o644); err != nil {
		return fmt.Errorf("pki: save leaf %q: %w", name, err)
	}
	return nil
}

// LoadLeaf reads a leaf written by SaveLeaf and checks that the key
// matches the certificate. It does not check validity against a root;
// use Leaf.Verify for that.
func LoadLeaf(dir, name string) (*Leaf, error) {
	certPath, keyPath, err := leafPaths(dir, name)
	if err != nil {
		return nil, fmt.Errorf("pki: load leaf: %w", err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load leaf %q: %w", name, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load leaf %q: %w", name, err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load leaf %q: %s: %w", name, keyPath, err)
	}
	leaf, err := NewLeaf(certPEM, key)
	if err != nil {
		return nil, fmt.Errorf("pki: load leaf %q: %w", name, err)
	}
	return leaf, nil
}

// SaveRoots writes root certificates to path as PEM (mode 0644), for
// processes that only need to verify peers.
func SaveRoots(path string, roots ...*x509.Certificate) error {
	if len(roots) == 0 {
		return errors.New("pki: save roots: no certificate")
	}
	var ders [][]byte
	for _, r := range roots {
		ders = append(ders, r.Raw)
	}
	if err := WriteFileAtomic(path, EncodeCertsPEM(ders...), 0o644); err != nil {
		return fmt.Errorf("pki: save roots: %w", err)
	}
	return nil
}

// LoadRoots reads a PEM file of root certificates into a pool.
func LoadRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: load roots: %w", err)
	}
	certs, err := ParseCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("pki: load roots: %s: %w", path, err)
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p, nil
}
