package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestNodeNetwork: two real nodes, each in a network namespace of its own
// with an address on the cluster's network. A pod with a claim on each
// node, on the pod network (not the host's), is written to and read from
// with kubectl exec and kubectl logs, which go from the apiserver to the
// node's kubelet at its address; each pod's volume is on its own node's
// disk, its cgroups under its own node's, and the two nodes' kubelets
// share no port.
func TestNodeNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := startCluster(ctx, t, topology{real: disks(1, ssd), reals: 2, network: true})
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	addrs := map[string]bool{}
	for _, n := range e.reals {
		addr := e.kubectl(ctx, "", "get", "node", n.Name, "-o", `jsonpath={.status.addresses[?(@.type=="InternalIP")].address}`)
		if addr == "" || strings.HasPrefix(addr, "127.") || addrs[addr] {
			t.Fatalf("%s has address %q: want one of its own, not loopback (others: %v)", n.Name, addr, addrs)
		}
		addrs[addr] = true
		e.apply(ctx, fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data-%[1]s, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: localdisk-ssd
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: on-%[1]s, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: %[1]s}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: %[2]s
    command: [sh, -c, "echo started on $(hostname); exec sleep 3600"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data-%[1]s}
`, n.Name, "docker.io/library/busybox:1.36"))
	}
	for _, n := range e.reals {
		pod := "on-" + n.Name
		e.waitFor(ctx, pod+" running", func() error {
			if p := e.get(ctx, "pod", "-n", "default", pod); !p.running() {
				return fmt.Errorf("phase %s", p.Status.Phase)
			}
			return nil
		})
		if p := e.get(ctx, "pod", "-n", "default", pod); p.Spec.NodeName != n.Name {
			t.Fatalf("%s runs on %s", pod, p.Spec.NodeName)
		}
		ip := e.kubectl(ctx, "", "get", "pod", "-n", "default", pod, "-o", "jsonpath={.status.podIP}")
		if ip == "" || addrs[ip] {
			t.Errorf("%s has pod IP %q: want one of the pod network, not the node's", pod, ip)
		}
		if _, err := e.cp.Kubectl(ctx, "", "exec", "-n", "default", pod, "--", "sh", "-c", "echo written-on-"+n.Name+" > /data/f && sync"); err != nil {
			t.Fatal(err)
		}
		got, err := e.cp.Kubectl(ctx, "", "exec", "-n", "default", pod, "--", "cat", "/data/f")
		if err != nil || strings.TrimSpace(got) != "written-on-"+n.Name {
			t.Fatalf("kubectl exec cat in %s: %q, %v", pod, got, err)
		}
		mounts, err := e.cp.Kubectl(ctx, "", "exec", "-n", "default", pod, "--", "cat", "/proc/mounts")
		if err != nil {
			t.Fatal(err)
		}
		dev := ""
		for _, l := range strings.Split(mounts, "\n") {
			if f := strings.Fields(l); len(f) > 2 && f[1] == "/data" {
				dev = f[0]
			}
		}
		if dev != n.Loops[0] {
			t.Errorf("%s: /data is %q, want its node's disk %s", pod, dev, n.Loops[0])
		}
		// The node's mounts are in its own mount namespace.
		if mi, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mi, []byte(" "+n.Loops[0]+" ")) {
			t.Errorf("%s's volume on %s is mounted in the machine's mount namespace", pod, n.Loops[0])
		}
		cg, err := e.cp.Kubectl(ctx, "", "exec", "-n", "default", pod, "--", "cat", "/proc/self/cgroup")
		if err != nil || !strings.Contains(cg, ":/ecs-localdisk-e2e-"+n.Name+"/") {
			t.Errorf("%s: the container's cgroups are not under its node's cgroup root /ecs-localdisk-e2e-%s: %q, %v", pod, n.Name, cg, err)
		}
		logs, err := e.cp.Kubectl(ctx, "", "logs", "-n", "default", pod)
		if err != nil || !strings.Contains(logs, "started on") {
			t.Errorf("kubectl logs %s: %q, %v", pod, logs, err)
		}
	}
}

// TestNodeShell: the real nodes' SSH servers (cluster.StartNodeSSH), as the
// storage suite's disruptive tests use them: only the written key gets in;
// systemctl stops and starts the node's own kubelet (the other node's runs
// on) and says whether it runs; other commands run in the node's network
// and mount namespaces, with its kubelet root at /var/lib/kubelet and its
// init at /proc/1; sudo is "command not found", as the suite expects of a
// node without it.
func TestNodeShell(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := startCluster(ctx, t, topology{real: disks(1, ssd), reals: 2, network: true})
	key := filepath.Join(e.dir, "node-ssh.key")
	if err := e.cp.StartNodeSSH(key); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(n string) string {
		return net.JoinHostPort(e.kubectl(ctx, "", "get", "node", n, "-o", `jsonpath={.status.addresses[?(@.type=="InternalIP")].address}`), "22")
	}
	run := func(node, cmd string, auth ssh.Signer) (stdout, stderr string, code int, err error) {
		c, err := ssh.Dial("tcp", addr(node), &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(auth)},
			HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
		if err != nil {
			return "", "", 0, err
		}
		defer c.Close()
		s, err := c.NewSession()
		if err != nil {
			return "", "", 0, err
		}
		defer s.Close()
		var o, eb bytes.Buffer
		s.Stdout, s.Stderr = &o, &eb
		err = s.Run(cmd)
		var exit *ssh.ExitError
		if errors.As(err, &exit) {
			return o.String(), eb.String(), exit.ExitStatus(), nil
		}
		return o.String(), eb.String(), 0, err
	}
	must := func(node, cmd string) string {
		t.Helper()
		out, errOut, code, err := run(node, cmd, signer)
		if err != nil || code != 0 {
			t.Fatalf("%s on %s: exit %d, %v: %s%s", cmd, node, code, err, out, errOut)
		}
		return out
	}
	a, b := e.reals[0].Name, e.reals[1].Name

	if _, _, _, err := run(a, "true", otherSigner(t)); err == nil {
		t.Fatal("a key other than the written one got in")
	}
	if _, errOut, code, _ := run(a, "sudo --version", signer); code == 0 || !strings.Contains(errOut, "command not found") {
		t.Errorf("sudo --version: exit %d, %q; want bash's command not found", code, errOut)
	}
	if got := must(a, "ip -o -4 addr show dev eth0"); !strings.Contains(got, strings.TrimSuffix(addr(a), ":22")+"/") {
		t.Errorf("the shell of %s is not in its network namespace: %q", a, got)
	}
	// The node's kubelet root is /var/lib/kubelet in its namespace: a
	// file made there is in the node's directory, and /proc/1 is the
	// node's init, whose mount namespace the shell is in.
	must(a, "touch /var/lib/kubelet/from-the-node-shell")
	if _, err := os.Stat(filepath.Join(e.dir, "nodes", a, "kubelet", "from-the-node-shell")); err != nil {
		t.Errorf("/var/lib/kubelet in %s's shell is not its kubelet root: %v", a, err)
	}
	if got := must(a, "readlink /proc/1/ns/mnt /proc/self/ns/mnt"); len(strings.Fields(got)) != 2 || strings.Fields(got)[0] != strings.Fields(got)[1] {
		t.Errorf("/proc/1 in %s is not in the node's mount namespace: %q", a, got)
	}
	own, _ := os.Readlink("/proc/self/ns/mnt")
	if got := must(a, "readlink /proc/self/ns/mnt"); strings.TrimSpace(got) == own {
		t.Errorf("%s's shell is in the machine's mount namespace", a)
	}

	if got := must(a, "systemctl show kubelet --property ActiveState --value"); strings.TrimSpace(got) != "active" {
		t.Errorf("kubelet of %s: %q, want active", a, got)
	}
	must(a, "systemctl stop kubelet")
	if got := must(a, "systemctl show kubelet --property ActiveState --value"); strings.TrimSpace(got) != "inactive" {
		t.Errorf("after stop, kubelet of %s: %q, want inactive", a, got)
	}
	if got := must(b, "systemctl show kubelet --property ActiveState --value"); strings.TrimSpace(got) != "active" {
		t.Errorf("stopping %s's kubelet stopped %s's: %q", a, b, got)
	}
	since := time.Now()
	must(a, "systemctl start kubelet")
	e.waitFor(ctx, a+" heartbeat from the new kubelet", func() error {
		hb := e.kubectl(ctx, "", "get", "node", a, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}`)
		at, err := time.Parse(time.RFC3339, hb)
		if err != nil || !at.After(since.Add(-time.Second)) {
			return fmt.Errorf("last heartbeat %q", hb)
		}
		return nil
	})
}

// otherSigner is an SSH key nobody was given.
func otherSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
