package image_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/meridian-run/meridian/image"
	"github.com/meridian-run/meridian/image/imagetest"
	"github.com/meridian-run/meridian/testutil"
)

func testImage(t *testing.T, body string) v1.Image {
	t.Helper()
	return imagetest.Image(t, v1.Config{Entrypoint: []string{"/bin/app"}},
		imagetest.Layer(t, imagetest.File{Name: "bin/"}, imagetest.File{Name: "bin/app", Body: body, Mode: 0o755}))
}

func digestOf(t *testing.T, d interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// resolveErr resolves ref and returns its *image.ResolveError, failing the
// test when it resolves.
func resolveErr(t *testing.T, ref string, opts image.ResolveOptions) *image.ResolveError {
	t.Helper()
	got, err := image.Resolve(context.Background(), ref, opts)
	if err == nil {
		t.Fatalf("%s resolved to %+v, want an error", ref, got)
	}
	var re *image.ResolveError
	if !errors.As(err, &re) {
		t.Fatalf("%s: %T %v, want *image.ResolveError", ref, err, err)
	}
	if !strings.Contains(err.Error(), ref) {
		t.Errorf("%s: the error %q does not name the image", ref, err)
	}
	return re
}

// TestResolveTagAndDigest: a tag resolves to the digest of what it names
// now (a moved tag to the new one); a digest that exists resolves to
// itself; only manifests are fetched.
func TestResolveTagAndDigest(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	ctx := context.Background()
	img1, img2 := testImage(t, "one"), testImage(t, "two")
	pinned1 := reg.Push(t, "team/web:1.4", img1)

	got, err := image.Resolve(ctx, reg.Host+"/team/web:1.4", image.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, img1) || got.Pinned() != pinned1 || got.Repository != reg.Host+"/team/web" || len(got.Platforms) != 0 {
		t.Fatalf("resolved %+v, want digest %s (%s)", got, digestOf(t, img1), pinned1)
	}

	reg.Push(t, "team/web:1.4", img2) // the tag moves
	moved, err := image.Resolve(ctx, reg.Host+"/team/web:1.4", image.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Digest != digestOf(t, img2) {
		t.Fatalf("after the tag moved: %s, want %s", moved.Digest, digestOf(t, img2))
	}
	byDigest, err := image.Resolve(ctx, pinned1, image.ResolveOptions{})
	if err != nil || byDigest.Digest != got.Digest {
		t.Fatalf("by digest: %+v, %v; want %s", byDigest, err, got.Digest)
	}
}

// TestResolveNotFound: an unknown tag, repository or digest is
// ErrNotFound, blamed on the image field, naming the registry.
func TestResolveNotFound(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	reg.Push(t, "team/web:1", testImage(t, "x"))
	for _, ref := range []string{
		reg.Host + "/team/web:2",
		reg.Host + "/team/nothing:1",
		reg.Host + "/team/web@sha256:" + strings.Repeat("0", 64),
	} {
		re := resolveErr(t, ref, image.ResolveOptions{})
		if !errors.Is(re, image.ErrNotFound) || re.Field != image.FieldImage || !strings.Contains(re.Error(), "at registry "+reg.Host) {
			t.Errorf("%s: field %s, %v; want not found on image naming the registry", ref, re.Field, re)
		}
	}
}

// TestResolveIndex: a multi-platform index keeps its own digest (machines
// pick their platform in it) and lists its linux platforms; an index
// without a linux image is refused.
func TestResolveIndex(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	amd, arm := testImage(t, "amd64"), testImage(t, "arm64")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}})
	pinned := reg.PushIndex(t, "multi:1", idx)
	got, err := image.Resolve(context.Background(), reg.Host+"/multi:1", image.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Pinned() != pinned || strings.Join(got.Platforms, ",") != "linux/amd64,linux/arm64/v8" {
		t.Fatalf("resolved %+v, want the index %s with linux/amd64 and linux/arm64/v8", got, pinned)
	}

	win := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "windows", Architecture: "amd64"}}})
	reg.PushIndex(t, "multi:win", win)
	re := resolveErr(t, reg.Host+"/multi:win", image.ResolveOptions{})
	if !errors.Is(re, image.ErrInvalid) || re.Field != image.FieldImage || !strings.Contains(re.Error(), "no linux image") {
		t.Errorf("windows-only index: field %s, %v", re.Field, re)
	}
}

// TestResolveCredentials: a registry with basic auth (htpasswd) admits
// each form of a registry secret; without one the image is blamed, with
// wrong ones or ones for another registry the secret is; no message ever
// shows a password or its base64 form.
func TestResolveCredentials(t *testing.T) {
	testutil.Slow(t)
	const user, pass = "puller", "s3cret-Pa55word"
	reg := imagetest.StartRegistryWith(t, imagetest.RegistryConfig{Users: map[string]string{user: pass}})
	img := testImage(t, "private")
	reg.Push(t, "private/app:1", img)
	ref := reg.Host + "/private/app:1"
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	for name, secret := range map[string]string{
		"user:password":         user + ":" + pass + "\n",
		"docker config auth":    fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.Host, b64(user+":"+pass)),
		"docker config fields":  fmt.Sprintf(`{"auths": {%q: {"username": %q, "password": %q}}}`, reg.Host, user, pass),
		"docker config url key": fmt.Sprintf(`{"auths": {"other.example": {"auth": "eDp5"}, "http://%s/v2/": {"auth": %q}}}`, reg.Host, b64(user+":"+pass)),
	} {
		got, err := image.Resolve(context.Background(), ref, image.ResolveOptions{Secret: secret, SecretName: "pull"})
		if err != nil || got.Digest != digestOf(t, img) {
			t.Errorf("%s: %+v, %v", name, got, err)
		}
	}

	leaks := []string{pass, b64(user + ":" + pass), b64("puller:wrong-Pa55word")}
	check := func(name string, re *image.ResolveError, field string, cause error) {
		t.Helper()
		if re.Field != field || !errors.Is(re, cause) {
			t.Errorf("%s: field %s, %v; want field %s, %v", name, re.Field, re, field, cause)
		}
		for _, l := range leaks {
			if strings.Contains(re.Error(), l) {
				t.Errorf("%s: the error shows a credential: %v", name, re)
			}
		}
	}
	re := resolveErr(t, ref, image.ResolveOptions{})
	check("no secret", re, image.FieldImage, image.ErrUnauthorized)
	if !strings.Contains(re.Error(), "registry_secret") {
		t.Errorf("no secret: %v does not say to name registry_secret", re)
	}
	re = resolveErr(t, ref, image.ResolveOptions{Secret: user + ":wrong-Pa55word", SecretName: "pull"})
	check("wrong password", re, image.FieldRegistrySecret, image.ErrUnauthorized)
	if !strings.Contains(re.Error(), `secret "pull"`) || !strings.Contains(re.Error(), reg.Host) {
		t.Errorf("wrong password: %v does not name the secret and registry", re)
	}
	re = resolveErr(t, ref, image.ResolveOptions{Secret: fmt.Sprintf(`{"auths": {"other.example": {"auth": %q}}}`, b64(user+":"+pass)), SecretName: "pull"})
	check("other registry", re, image.FieldRegistrySecret, image.ErrCredentials)
	if !strings.Contains(re.Error(), `secret "pull"`) || !strings.Contains(re.Error(), "no entry for registry "+reg.Host) {
		t.Errorf("other registry: %v", re)
	}
}

// TestResolveUnreachable: a registry that is down, and one that accepts
// connections but never answers, are ErrUnreachable within the timeout.
func TestResolveUnreachable(t *testing.T) {
	testutil.Slow(t)
	reg := imagetest.StartRegistry(t)
	reg.Push(t, "web:1", testImage(t, "x"))
	reg.Stop()
	re := resolveErr(t, reg.Host+"/web:1", image.ResolveOptions{Timeout: 5 * time.Second})
	if !errors.Is(re, image.ErrUnreachable) || re.Field != image.FieldImage {
		t.Errorf("registry down: field %s, %v", re.Field, re)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	re = resolveErr(t, ln.Addr().String()+"/web:1", image.ResolveOptions{Timeout: 300 * time.Millisecond})
	if !errors.Is(re, image.ErrUnreachable) || !strings.Contains(re.Error(), "did not answer within 300ms") {
		t.Errorf("silent registry: %v", re)
	}
}

// TestResolveHostileRegistry: a registry (a fake: a real one never does
// this) that echoes the Authorization header it got in its error, or that
// sends a manifest without end, gets no credential shown and no unbounded
// read.
func TestResolveHostileRegistry(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.Contains(r.URL.Path, "/huge/"):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.WriteHeader(http.StatusOK)
			chunk := []byte(strings.Repeat(" ", 64<<10))
			for range 200 { // 12.5 MiB
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials %s"}]}`, r.Header.Get("Authorization"))
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	const secret = "puller:hostile-Pa55word"
	re := resolveErr(t, host+"/echo:1", image.ResolveOptions{Secret: secret, SecretName: "pull"})
	if !errors.Is(re, image.ErrUnauthorized) || re.Field != image.FieldRegistrySecret {
		t.Errorf("echoing registry: field %s, %v", re.Field, re)
	}
	if b := base64.StdEncoding.EncodeToString([]byte(secret)); strings.Contains(re.Error(), b) || strings.Contains(re.Error(), "hostile-Pa55word") {
		t.Errorf("the error shows the credentials: %v", re)
	}
	if !strings.Contains(re.Error(), "[redacted]") {
		t.Errorf("the echoed credentials were not replaced: %v", re)
	}

	re = resolveErr(t, host+"/huge:1", image.ResolveOptions{})
	if !errors.Is(re, image.ErrInvalid) || !strings.Contains(re.Error(), "more than 4194304 bytes") {
		t.Errorf("endless manifest: %v", re)
	}
}
