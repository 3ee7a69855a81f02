package tcmu

import (
	"bufio"
	"context"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/cachelun/cachelun/target/scsi"
)

func TestCheckConfig(t *testing.T) {
	h := dbusHandler{subtype: "cachelun", check: func(cfg string) error {
		if cfg != "db1" {
			return errors.New("no volume named " + cfg)
		}
		return nil
	}}
	for _, tc := range []struct {
		in      string
		ok      bool
		message string
	}{
		{"cachelun/db1", true, "success"},
		{"cachelun/db2", false, "no volume named db2"},
		{"file/db1", false, `subtype "file" is not served here`},
		{"cachelun/", false, "empty cfgstring"},
		{"cachelun", false, "not <subtype>/<cfgstring>"},
		{"cachelun/a:b", false, "':'"},
	} {
		ok, msg, derr := h.CheckConfig(tc.in)
		if derr != nil || ok != tc.ok || !strings.Contains(msg, tc.message) {
			t.Errorf("CheckConfig(%q) = %v, %q, %v; want %v, ~%q", tc.in, ok, msg, derr, tc.ok, tc.message)
		}
	}
}

func TestGetManagedObjects(t *testing.T) {
	objs, derr := dbusObjectManager{subtype: "cachelun", configDesc: "desc"}.GetManagedObjects()
	if derr != nil {
		t.Fatal(derr)
	}
	if len(objs) != 1 {
		t.Fatalf("objects %v", objs)
	}
	v, ok := objs["/org/kernel/TCMUService1/cachelun"][dbusIface]["ConfigDesc"]
	if !ok || v.Value() != "desc" {
		t.Fatalf("objects %v", objs)
	}
}

func TestIntrospectionXML(t *testing.T) {
	root, err := introspectionXML(rootIntrospection("cachelun"))
	if err != nil {
		t.Fatal(err)
	}
	var n introspect.Node
	if err := xml.Unmarshal([]byte(root[len(introspect.IntrospectDeclarationString):]), &n); err != nil {
		t.Fatalf("root XML does not parse: %v\n%s", err, root)
	}
	if !hasMethod(n, objectManager, "GetManagedObjects", "a{oa{sa{sv}}}") || len(n.Children) != 1 || n.Children[0].Name != "cachelun" {
		t.Fatalf("root introspection:\n%s", root)
	}

	hx, err := introspectionXML(handlerIntrospection("cachelun", []introspect.Property{{Name: "ConfigDesc", Type: "s", Access: "read"}}))
	if err != nil {
		t.Fatal(err)
	}
	var hn introspect.Node
	if err := xml.Unmarshal([]byte(hx[len(introspect.IntrospectDeclarationString):]), &hn); err != nil {
		t.Fatal(err)
	}
	if !hasMethod(hn, dbusIface, "CheckConfig", "s") {
		t.Fatalf("handler introspection lacks CheckConfig(s):\n%s", hx)
	}
	for _, i := range hn.Interfaces {
		if i.Name == dbusIface {
			outs := 0
			for _, m := range i.Methods {
				for _, a := range m.Args {
					if a.Direction == "out" {
						outs++
					}
				}
			}
			if outs != 2 || len(i.Properties) != 1 || i.Properties[0].Name != "ConfigDesc" || i.Properties[0].Type != "s" {
				t.Fatalf("handler interface %+v", i)
			}
		}
	}
}

func hasMethod(n introspect.Node, iface, method, firstArgType string) bool {
	for _, i := range n.Interfaces {
		if i.Name != iface {
			continue
		}
		for _, m := range i.Methods {
			if m.Name == method && len(m.Args) > 0 && m.Args[0].Type == firstArgType {
				return true
			}
		}
	}
	return false
}

// startBus runs a private dbus-daemon for the test.
func startBus(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Fatalf("dbus-daemon is needed for the D-Bus service test (apt-get install dbus-daemon): %v", err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "bus.conf")
	sock := filepath.Join(dir, "bus.sock")
	os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>custom</type><listen>unix:path=`+sock+`</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/></policy>
</busconfig>`), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config-file="+conf, "--nofork", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon did not start: %v", err)
	}
	return strings.TrimSpace(line)
}

// TestDBusServiceLive exports the service on a private bus and queries it
// the way targetcli does.
func TestDBusServiceLive(t *testing.T) {
	addr := startBus(t)
	srv, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := exportDBus(srv, "cachelun", "volume name", func(cfg string) error {
		if cfg == "missing" {
			return errors.New("volume \"missing\" is not configured")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cli, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	root := cli.Object(dbusName, dbusRoot)
	if err := root.CallWithContext(ctx, objectManager+".GetManagedObjects", 0).Store(&objs); err != nil {
		t.Fatal(err)
	}
	if objs["/org/kernel/TCMUService1/cachelun"][dbusIface]["ConfigDesc"].Value() != "volume name" {
		t.Fatalf("GetManagedObjects = %v", objs)
	}
	h := cli.Object(dbusName, handlerPath("cachelun"))
	var ok bool
	var msg string
	if err := h.CallWithContext(ctx, dbusIface+".CheckConfig", 0, "cachelun/missing").Store(&ok, &msg); err != nil {
		t.Fatal(err)
	}
	if ok || !strings.Contains(msg, `"missing" is not configured`) {
		t.Fatalf("CheckConfig(missing) = %v %q", ok, msg)
	}
	if err := h.CallWithContext(ctx, dbusIface+".CheckConfig", 0, "cachelun/db1").Store(&ok, &msg); err != nil || !ok {
		t.Fatalf("CheckConfig(db1) = %v %q %v", ok, msg, err)
	}
	v, err := h.GetProperty(dbusIface + ".ConfigDesc")
	if err != nil || v.Value() != "volume name" {
		t.Fatalf("ConfigDesc = %v, %v", v, err)
	}
	var xmlText string
	if err := h.CallWithContext(ctx, "org.freedesktop.DBus.Introspectable.Introspect", 0).Store(&xmlText); err != nil || !strings.Contains(xmlText, "CheckConfig") {
		t.Fatalf("Introspect: %v\n%s", err, xmlText)
	}

	// A second owner is refused with a clear error.
	other, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := exportDBus(other, "cachelun", "x", nil); !errors.Is(err, ErrServiceTaken) {
		t.Fatalf("second owner: %v", err)
	}
}

// TestRunStopsBeforeNetlinkWhenNameTaken: with tcmu-runner (or anyone)
// owning the service name, Run must fail before it tells the kernel to wait
// for replies.
func TestRunStopsBeforeNetlinkWhenNameTaken(t *testing.T) {
	addr := startBus(t)
	owner, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if reply, err := owner.RequestName(dbusName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("take name: %v %v", reply, err)
	}
	h, err := New(Config{Logger: testLogger(t), DBusAddress: addr,
		Resolve: func(string, int64) (scsi.Volume, error) { return nil, ErrUnknownVolume }})
	if err != nil {
		t.Fatal(err)
	}
	h.procDir = t.TempDir()
	if err := h.Run(context.Background()); !errors.Is(err, ErrServiceTaken) {
		t.Fatalf("Run with the name taken: %v, want ErrServiceTaken", err)
	}
}
