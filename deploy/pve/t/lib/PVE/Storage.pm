package PVE::Storage;

# Test stand-in for the part of pve-storage's PVE::Storage the tests use:
# the API version a custom plugin is checked against when it is loaded.

use strict;
use warnings;

use constant APIVER => 15;
use constant APIAGE => 6;

# The check PVE::Storage runs on each module in PVE/Storage/Custom/.
sub check_custom_plugin {
    my ($modname) = @_;
    die "does not provide an api() method\n" if !$modname->can('api');
    my $version = $modname->api();
    die "implements an API version newer than current ($version > " . APIVER . ")\n"
        if $version > APIVER;
    my $min_version = (APIVER - APIAGE);
    die "API version too old, please update the plugin ($version < $min_version)\n"
        if $version < $min_version;
    return $version;
}

1;
