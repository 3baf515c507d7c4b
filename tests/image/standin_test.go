package image

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The tests build without a container registry, so the Dockerfile's two
// pinned bases are replaced by images made here from Debian's packages:
//
//   - debian:bookworm-slim by a Debian bookworm minbase root filesystem
//     from debootstrap (the slim image is made the same way, less
//     documentation), with the slim image's apt sources;
//   - golang:<version>-alpine (the Alpine base) by that same Debian root
//     filesystem plus the host's Go toolchain, copied in from
//     $(go env GOROOT), the host's CA bundle and its module proxy settings.
//
// What the build stage proves this way: the Dockerfile's own steps (its
// COPY list, go mod download through the module proxy, the go build line
// with its ldflags) produce a static binary that runs in the runtime image.
// What it does not prove: that the pinned golang digest still exists or
// holds the Go version its tag names, or anything Alpine-specific (musl,
// busybox, Alpine's CA bundle); the binary is built by the host's Go, not
// by the pinned one. The runtime stage is much closer to the real one:
// same Debian release, and its apt-get install runs for real against
// Debian's mirror, so the tools checked come from the packages the real
// image gets. Neither stand-in proves the pinned digests can be pulled.

const (
	debianMirror = "http://deb.debian.org/debian"
	suite        = "bookworm"

	standInDebian = "localhost/stand-in/debian:bookworm-slim"
	standInGolang = "localhost/stand-in/golang:host"

	basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// slimSources is the apt source list of debian:bookworm-slim, so the
// runtime stage's apt-get sees the same suites (with updates and
// security) as it does on the real base.
const slimSources = `Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`

// cacheDir is where the debootstrapped root filesystem is kept between
// runs (delete it to take a fresh one from the mirror).
func cacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(base, "ecs-localdisk-csi", "image"), nil
}

// bookwormRootfs returns a tar of a Debian bookworm minbase root
// filesystem, from the cache or made by debootstrap and then cached.
func bookwormRootfs(logf func(string, ...any)) (string, error) {
	dir, err := cacheDir()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, fmt.Sprintf("%s-minbase-%s.tar", suite, runtime.GOARCH))
	if st, err := os.Stat(out); err == nil {
		logf("cached %s root filesystem %s (%d MB, from %s)", suite, out, st.Size()>>20, st.ModTime().Format(time.DateOnly))
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(dir, "debootstrap-")
	if err != nil {
		return "", err
	}
	defer func() {
		// debootstrap mounts proc and sysfs in its target: never remove
		// the tree while one is still there.
		if err := unmountUnder(work); err != nil {
			logf("leaving %s in place: %v", work, err)
			return
		}
		os.RemoveAll(work)
	}()
	rootfs := filepath.Join(work, "rootfs")
	start := time.Now()
	logf("debootstrap --variant=minbase %s %s %s (a few minutes; cached afterwards)", suite, rootfs, debianMirror)
	cmd := exec.Command("debootstrap", "--variant=minbase", suite, rootfs, debianMirror)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debootstrap: %v\n%s", err, tail(log.String(), 30))
	}
	if err := unmountUnder(rootfs); err != nil {
		return "", err
	}
	logf("debootstrap took %s", time.Since(start).Round(time.Second))
	// The slim image's apt sources, no apt lists or caches, an empty /dev
	// (the runtime fills it).
	if err := os.WriteFile(filepath.Join(rootfs, "etc/apt/sources.list.d/debian.sources"), []byte(slimSources), 0o644); err != nil {
		return "", err
	}
	for _, glob := range []string{"etc/apt/sources.list", "var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "dev/*", "etc/hostname", "etc/resolv.conf"} {
		matches, _ := filepath.Glob(filepath.Join(rootfs, glob))
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return "", err
			}
		}
	}
	if _, err := os.Stat(filepath.Join(rootfs, "usr/share/keyrings/debian-archive-keyring.gpg")); err != nil {
		return "", fmt.Errorf("the %s root filesystem has no Debian archive keyring, which its apt sources name: %v", suite, err)
	}
	tmp := out + ".part"
	if b, err := exec.Command("tar", "--numeric-owner", "-C", rootfs, "-cf", tmp, ".").CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("tar %s: %v\n%s", rootfs, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}

// commitStandIns makes the two stand-in base images in s.
func commitStandIns(s store, rootfsTar, goroot string, goEnv []string) error {
	ctr, err := s.run("from", "scratch")
	if err != nil {
		return err
	}
	steps := [][]string{
		{"add", ctr, rootfsTar, "/"},
		{"config", "--env", "PATH=" + basePath, "--cmd", "bash", ctr},
		{"commit", "--quiet", "--rm", ctr, standInDebian},
	}
	for _, args := range steps {
		if _, err := s.run(args...); err != nil {
			return err
		}
	}
	ctr, err = s.run("from", "--pull=never", standInDebian)
	if err != nil {
		return err
	}
	// The golang image's layout: Go in /usr/local/go, GOPATH /go, the
	// toolchain that is there and no other (GOTOOLCHAIN=local). The host's
	// module proxy settings go in as ENV: the Dockerfile declares no ARG
	// for them, and go mod download needs them.
	config := []string{"config", "--workingdir", "/go",
		"--env", "PATH=/go/bin:/usr/local/go/bin:" + basePath,
		"--env", "GOPATH=/go", "--env", "GOTOOLCHAIN=local"}
	for _, kv := range goEnv {
		config = append(config, "--env", kv)
	}
	// The golang image carries a CA bundle for go mod download's HTTPS;
	// the stand-in gets the host's, so it trusts what the host's go does.
	steps = [][]string{
		{"copy", ctr, goroot, "/usr/local/go"},
		{"copy", ctr, hostCABundle(), "/etc/ssl/certs/ca-certificates.crt"},
		append(config, ctr),
		{"commit", "--quiet", "--rm", ctr, standInGolang},
	}
	for _, args := range steps {
		if _, err := s.run(args...); err != nil {
			return err
		}
	}
	return nil
}

// hostCABundle is the file of CA certificates the host's Go trusts.
func hostCABundle() string {
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		return f
	}
	return "/etc/ssl/certs/ca-certificates.crt"
}

// hostGoEnv is the host's module download settings, as KEY=value for the
// ones that are set.
func hostGoEnv() (goroot, goversion string, env []string, err error) {
	keys := []string{"GOROOT", "GOVERSION", "GOPROXY", "GOSUMDB", "GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOINSECURE", "GOFLAGS"}
	// JSON: one line per key would lose the empty values at the end.
	out, err := exec.Command("go", append([]string{"env", "-json"}, keys...)...).Output()
	if err != nil {
		return "", "", nil, fmt.Errorf("go env: %v", err)
	}
	vals := map[string]string{}
	if err := json.Unmarshal(out, &vals); err != nil {
		return "", "", nil, fmt.Errorf("go env -json: %v", err)
	}
	for _, k := range keys[2:] {
		if v := vals[k]; v != "" {
			env = append(env, k+"="+v)
		}
	}
	return vals["GOROOT"], vals["GOVERSION"], env, nil
}

// standInFor says which stand-in replaces each base image the Dockerfile
// may name, by normalized repository and tag. A tag this does not know
// (debian:trixie-slim, a golang tag not on Alpine) has no stand-in.
func standInFor(ref string) (string, bool) {
	repo, tag := normalize(ref)
	switch {
	case repo == "docker.io/library/debian" && tag == "bookworm-slim":
		return standInDebian, true
	case repo == "docker.io/library/golang" && strings.HasSuffix(tag, "-alpine"):
		return standInGolang, true
	}
	return "", false
}

// normalize splits an image reference into its fully qualified repository
// and its tag, dropping any digest.
func normalize(ref string) (repo, tag string) {
	ref, _, _ = strings.Cut(ref, "@")
	repo, tag = ref, "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	first, _, hasSlash := strings.Cut(repo, "/")
	switch {
	case !hasSlash:
		repo = "docker.io/library/" + repo
	case !strings.ContainsAny(first, ".:") && first != "localhost":
		repo = "docker.io/" + repo
	}
	return repo, tag
}

// rewriteFrom returns the Dockerfile with each FROM's base image replaced
// by its stand-in, and the base images it replaced. A FROM naming an image
// without a stand-in is an error, so a new stage or base cannot pass
// unbuilt; a FROM naming an earlier stage is left as it is.
func rewriteFrom(dockerfile []byte) ([]byte, []string, error) {
	var out bytes.Buffer
	var replaced []string
	stages := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(dockerfile))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 || !strings.EqualFold(f[0], "FROM") {
			out.WriteString(line + "\n")
			continue
		}
		i := 1
		for i < len(f) && strings.HasPrefix(f[i], "--") {
			i++
		}
		if i >= len(f) {
			return nil, nil, fmt.Errorf("Dockerfile line %d: FROM without an image: %q", n, line)
		}
		base := f[i]
		if stages[strings.ToLower(base)] {
			out.WriteString(line + "\n")
		} else {
			standIn, ok := standInFor(base)
			if !ok {
				return nil, nil, fmt.Errorf("Dockerfile line %d: FROM %s: no local stand-in for this base image (tests/image/standin_test.go knows debian:bookworm-slim and golang:*-alpine)", n, base)
			}
			f[i] = standIn
			out.WriteString(strings.Join(f, " ") + "\n")
			replaced = append(replaced, base)
		}
		if len(f) >= i+3 && strings.EqualFold(f[i+1], "AS") {
			stages[strings.ToLower(f[i+2])] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	if len(replaced) == 0 {
		return nil, nil, fmt.Errorf("Dockerfile has no FROM line")
	}
	return out.Bytes(), replaced, nil
}

// TestHostGoEnvKeepsEmptyValues: with the last keys unset (as on a fresh
// machine), the host's Go settings are still read.
func TestHostGoEnvKeepsEmptyValues(t *testing.T) {
	for _, k := range []string{"GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOINSECURE", "GOFLAGS"} {
		t.Setenv(k, "")
	}
	t.Setenv("GOENV", "off")
	goroot, version, env, err := hostGoEnv()
	if err != nil || goroot == "" || !strings.HasPrefix(version, "go") {
		t.Fatalf("hostGoEnv: %q %q %v %v", goroot, version, env, err)
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "GOFLAGS=") || strings.HasPrefix(kv, "GOINSECURE=") {
			t.Fatalf("empty setting passed on: %q", kv)
		}
	}
}
