package PVE::Storage::Plugin;

# Test stand-in for Proxmox VE's PVE::Storage::Plugin (pve-storage): only
# what the Backstop plugin inherits or reads. The real base class is a
# PVE::SectionConfig with many more methods; Backstop overrides every
# method PVE calls on a backup storage, so the stand-in only has to answer
# like the real defaults for the rest.

use strict;
use warnings;

# Same flags as pve-storage's src/PVE/Storage/Plugin.pm.
our @COMMON_TAR_FLAGS = qw(
    --one-file-system
    -p --sparse --numeric-owner --acls
    --xattrs --xattrs-include=user.* --xattrs-include=security.capability
    --warning=no-file-ignored --warning=no-xattr-write
);

sub check_connection { return 1 }

sub new_backup_provider {
    die "implement me if enabling the feature 'backup-provider' in plugindata()->{features}\n";
}

sub get_volume_notes {
    my ($class) = @_;
    die "volume notes are not supported for $class";
}

sub update_volume_notes {
    my ($class) = @_;
    die "volume notes are not supported for $class";
}

sub on_add_hook { return undef }
sub on_update_hook { return undef }
sub on_delete_hook { return undef }

1;
