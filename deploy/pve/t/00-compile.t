#!/usr/bin/perl
# The modules compile (perl -c) against the PVE stand-ins, load, and
# register as PVE expects: type, API version in PVE's accepted range,
# options, the backup-provider feature, and every provider method.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../src";
use Test::More;

my $src = "$FindBin::Bin/../src";
my @modules = qw(
    Backstop/Client.pm
    Backstop/Relay.pm
    PVE/BackupProvider/Plugin/Backstop.pm
    PVE/Storage/Custom/BackstopPlugin.pm
);
for my $m (@modules) {
    my $out = `$^X -I$FindBin::Bin/lib -I$src -wc $src/$m 2>&1`;
    is($?, 0, "perl -c $m") or diag($out);
    unlike($out, qr/used only once|redefined|uninitialized/i, "$m compiles without warnings") or diag($out);
}

require PVE::Storage;
require PVE::Storage::Custom::BackstopPlugin;
my $p = 'PVE::Storage::Custom::BackstopPlugin';
ok($p->isa('PVE::Storage::Plugin'), 'storage plugin derives from PVE::Storage::Plugin');
is($p->type, 'backstop', 'type');
my $v = eval { PVE::Storage::check_custom_plugin($p) };
is($@, '', "PVE's custom plugin check accepts api() $v");
cmp_ok($p->api, '>=', 11, 'api() is at least 11 (backup provider API)');
is_deeply($p->plugindata->{features}, { 'backup-provider' => 1 }, 'backup-provider feature');
ok($p->plugindata->{'sensitive-properties'}->{token}, 'token is a sensitive property');
is_deeply([sort keys %{ $p->properties }], ['token'], 'only the new property name is defined');
my $o = $p->options;
ok(exists($o->{$_}), "option $_") for qw(server token fingerprint namespace prune-backups max-protected-backups nodes disable);
ok(!$o->{server}->{optional}, 'server is required');

require PVE::BackupProvider::Plugin::Backstop;
my $prov = 'PVE::BackupProvider::Plugin::Backstop';
ok($prov->isa('PVE::BackupProvider::Plugin::Base'), 'provider derives from the Base');
for my $m (qw(
    new provider_name job_init job_cleanup backup_init backup_cleanup backup_get_mechanism
    backup_handle_log_file backup_vm_query_incremental backup_vm backup_container_prepare
    backup_container restore_get_mechanism archive_get_guest_config archive_get_firewall_config
    restore_vm_init restore_vm_cleanup restore_vm_volume_init restore_vm_volume_cleanup
    restore_container_init restore_container_cleanup
)) {
    isnt($prov->can($m), PVE::BackupProvider::Plugin::Base->can($m), "provider implements $m");
}

# Only modules a PVE node has: core Perl, IO::Socket::SSL, JSON, and PVE's own.
for my $m (@modules) {
    open(my $fh, '<', "$src/$m") or die;
    my @uses = map { /^use\s+([\w:]+)/ ? $1 : () } <$fh>;
    close($fh);
    my @foreign = grep {
        !/^(strict|warnings|base|constant|Backstop::\w+|PVE::\w+(::\w+)*|JSON|IO::Socket::SSL)$/
            && !_core($_)
    } @uses;
    is_deeply(\@foreign, [], "$m uses only core Perl, JSON, IO::Socket::SSL and PVE modules");
}

sub _core {
    my ($mod) = @_;
    require Module::CoreList;
    return Module::CoreList::is_core($mod, undef, '5.036');
}

done_testing();
