package tcmu

import (
	"encoding/xml"
	"errors"
	"fmt"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/godbus/dbus/v5/prop"
)

// The D-Bus service targetcli queries to list user:<subtype> backstores and
// to validate a cfgstring before it creates one (tcmu-runner's interface).
const (
	dbusName      = "org.kernel.TCMUService1"
	dbusRoot      = dbus.ObjectPath("/org/kernel/TCMUService1")
	dbusIface     = "org.kernel.TCMUService1"
	objectManager = "org.freedesktop.DBus.ObjectManager"
)

// ErrServiceTaken means another process owns org.kernel.TCMUService1 on the
// bus, almost always tcmu-runner.
var ErrServiceTaken = errors.New("tcmu: D-Bus name " + dbusName + " is owned by another process (tcmu-runner?)")

// dbusHandler is the object at /org/kernel/TCMUService1/<subtype>.
type dbusHandler struct {
	subtype string
	check   func(cfgstring string) error
}

// CheckConfig answers targetcli's question whether "<subtype>/<cfgstring>"
// names something this daemon can serve.
func (h dbusHandler) CheckConfig(config string) (bool, string, *dbus.Error) {
	ok, msg := h.checkConfig(config)
	return ok, msg, nil
}

func (h dbusHandler) checkConfig(config string) (bool, string) {
	subtype, cfg, err := splitDevConfig(config)
	if err != nil {
		return false, err.Error()
	}
	if subtype != h.subtype {
		return false, fmt.Sprintf("subtype %q is not served here (this handler is %q)", subtype, h.subtype)
	}
	if err := validateCfgstring(cfg); err != nil {
		return false, err.Error()
	}
	if h.check != nil {
		if err := h.check(cfg); err != nil {
			return false, err.Error()
		}
	}
	return true, "success"
}

// dbusObjectManager is the object at /org/kernel/TCMUService1.
type dbusObjectManager struct {
	subtype, configDesc string
}

// GetManagedObjects lists one handler object per subtype; targetcli makes a
// user:<last path element> backstore type of each.
func (m dbusObjectManager) GetManagedObjects() (map[dbus.ObjectPath]map[string]map[string]dbus.Variant, *dbus.Error) {
	return m.objects(), nil
}

func (m dbusObjectManager) objects() map[dbus.ObjectPath]map[string]map[string]dbus.Variant {
	return map[dbus.ObjectPath]map[string]map[string]dbus.Variant{
		handlerPath(m.subtype): {dbusIface: {"ConfigDesc": dbus.MakeVariant(m.configDesc)}},
	}
}

func handlerPath(subtype string) dbus.ObjectPath {
	return dbusRoot + "/" + dbus.ObjectPath(subtype)
}

func rootIntrospection(subtype string) *introspect.Node {
	return &introspect.Node{
		Name: string(dbusRoot),
		Interfaces: []introspect.Interface{
			introspect.IntrospectData,
			{Name: objectManager, Methods: introspect.Methods(dbusObjectManager{})},
		},
		Children: []introspect.Node{{Name: subtype}},
	}
}

func handlerIntrospection(subtype string, props []introspect.Property) *introspect.Node {
	return &introspect.Node{
		Name: string(handlerPath(subtype)),
		Interfaces: []introspect.Interface{
			introspect.IntrospectData,
			prop.IntrospectData,
			{Name: dbusIface, Methods: introspect.Methods(dbusHandler{}), Properties: props},
		},
	}
}

func introspectionXML(n *introspect.Node) (string, error) {
	b, err := xml.MarshalIndent(n, "", "  ")
	if err != nil {
		return "", err
	}
	return string(introspect.IntrospectDeclarationString) + string(b), nil
}

// exportDBus publishes the service on conn and takes the bus name.
func exportDBus(conn *dbus.Conn, subtype, configDesc string, check func(string) error) error {
	om := dbusObjectManager{subtype: subtype, configDesc: configDesc}
	if err := conn.Export(om, dbusRoot, objectManager); err != nil {
		return err
	}
	if err := conn.Export(introspect.NewIntrospectable(rootIntrospection(subtype)), dbusRoot, "org.freedesktop.DBus.Introspectable"); err != nil {
		return err
	}
	hp := handlerPath(subtype)
	if err := conn.Export(dbusHandler{subtype: subtype, check: check}, hp, dbusIface); err != nil {
		return err
	}
	props, err := prop.Export(conn, hp, prop.Map{dbusIface: {
		"ConfigDesc": {Value: configDesc, Writable: false, Emit: prop.EmitFalse},
	}})
	if err != nil {
		return err
	}
	node := handlerIntrospection(subtype, props.Introspection(dbusIface))
	if err := conn.Export(introspect.NewIntrospectable(node), hp, "org.freedesktop.DBus.Introspectable"); err != nil {
		return err
	}
	reply, err := conn.RequestName(dbusName, dbus.NameFlagDoNotQueue)
	if err != nil {
		return fmt.Errorf("tcmu: request D-Bus name %s (is contrib/dbus/org.kernel.TCMUService1.conf installed in /etc/dbus-1/system.d?): %w", dbusName, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner && reply != dbus.RequestNameReplyAlreadyOwner {
		return ErrServiceTaken
	}
	return nil
}
