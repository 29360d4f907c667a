#!/usr/bin/env python3
"""A GLib (Gio) D-Bus service for kdbusctl's differential tests: owns org.kdbus.Glib on
the bus at argv[1] and serves /org/kdbus/Glib with a few methods and properties."""
import sys
from gi.repository import Gio, GLib

XML = """
<node>
  <interface name="org.kdbus.Glib">
    <method name="Echo"><arg type="s" direction="in"/><arg type="s" direction="out"/></method>
    <method name="Add"><arg type="i" direction="in"/><arg type="i" direction="in"/><arg type="i" direction="out"/></method>
    <method name="Tags"><arg type="as" direction="out"/><arg type="a{sv}" direction="out"/></method>
    <property name="Name" type="s" access="read"/>
    <property name="Count" type="u" access="read"/>
    <property name="Flags" type="as" access="read"/>
    <property name="Label" type="s" access="readwrite"/>
  </interface>
</node>
"""

def call(conn, sender, path, iface, method, params, invocation):
    if method == "Echo":
        invocation.return_value(GLib.Variant("(s)", (params.unpack()[0],)))
    elif method == "Add":
        a, b = params.unpack()
        invocation.return_value(GLib.Variant("(i)", (a + b,)))
    elif method == "Tags":
        invocation.return_value(GLib.Variant("(asa{sv})", (["a", "b c"], {"k": GLib.Variant("u", 7)})))

label = GLib.Variant("s", "unset")

def get(conn, sender, path, iface, prop):
    return {"Name": GLib.Variant("s", "glib \"quoted\""), "Count": GLib.Variant("u", 42),
            "Flags": GLib.Variant("as", ["x", "y"]), "Label": label}[prop]

def set_(conn, sender, path, iface, prop, value):
    global label
    label = value
    return True

flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
conn = Gio.DBusConnection.new_for_address_sync(sys.argv[1], flags, None, None)
node = Gio.DBusNodeInfo.new_for_xml(XML)
conn.register_object("/org/kdbus/Glib", node.interfaces[0], call, get, set_)
Gio.bus_own_name_on_connection(conn, "org.kdbus.Glib", Gio.BusNameOwnerFlags.NONE, None, None)
GLib.MainLoop().run()
