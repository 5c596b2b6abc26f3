package region

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// sealer encrypts the secret values a region stores in etcd (AES-256-GCM),
// under a key derived from the region's intermediate CA key: every server
// of the region holds that key already, so no other key needs
// distributing, and etcd's data files never hold a secret in the clear.
type sealer struct{ aead cipher.AEAD }

func newSealer(caKey any) (*sealer, error) {
	k, ok := caKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("region: secrets: the CA key is %T, want ECDSA", caKey)
	}
	d, err := k.Bytes()
	if err != nil {
		return nil, fmt.Errorf("region: secrets: %w", err)
	}
	key, err := hkdf.Key(sha256.New, d, nil, "meridian region secrets v1", 32)
	if err != nil {
		return nil, fmt.Errorf("region: secrets: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal encrypts a deployment's secret values, bound to the deployment and
// the secret's name.
func (s *sealer) seal(dep string, values map[string]string) map[string][]byte {
	if len(values) == 0 {
		return nil
	}
	out := make(map[string][]byte, len(values))
	for name, v := range values {
		nonce := make([]byte, s.aead.NonceSize())
		rand.Read(nonce)
		out[name] = s.aead.Seal(nonce, nonce, []byte(v), []byte(dep+"/"+name))
	}
	return out
}

// open decrypts what seal produced.
func (s *sealer) open(dep string, sealed map[string][]byte) (map[string]string, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(sealed))
	n := s.aead.NonceSize()
	for name, b := range sealed {
		if len(b) < n {
			return nil, errors.New("sealed secret too short")
		}
		pt, err := s.aead.Open(nil, b[:n], b[n:], []byte(dep+"/"+name))
		if err != nil {
			return nil, fmt.Errorf("secret %s of deployment %s: %w", name, dep, err)
		}
		out[name] = string(pt)
	}
	return out, nil
}
