#!/usr/bin/perl
# The storage plugin against a real server: token kept in the private dir,
# names parsed without the network, status fast and cached (and inactive,
# quickly, when the server is down or hangs), TLS pinning, clear errors.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../src";
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time);

use BackstopTest;

BEGIN { require_peers('pg') }

use PVE::Storage::Custom::BackstopPlugin;

my $srv = start_server();
my ($plugin, $scfg, $storeid, $root) = pve_storage($srv);

subtest 'token in the private storage dir' => sub {
    my $f = "$root/etc/pve/priv/storage/$storeid.token";
    ok(-f $f, 'on_add_hook wrote the token file');
    is((stat($f))[2] & 07777, 0600, 'mode 0600');
    is(PVE::Storage::Custom::BackstopPlugin::read_token($storeid), $srv->{token}, 'token read back');
    ok(!exists($scfg->{token}), 'the token is not in the storage config');
    $plugin->on_update_hook($storeid, {}, token => 'bst_new');
    is(PVE::Storage::Custom::BackstopPlugin::read_token($storeid), 'bst_new', 'update replaces it');
    $plugin->on_update_hook($storeid, {}, token => $srv->{token});
    $plugin->on_update_hook('other', {}, token => 'x');
    $plugin->on_update_hook('other', {}, token => undef);
    ok(!-e "$root/etc/pve/priv/storage/other.token", 'deleting the token removes the file');
    eval { $plugin->on_add_hook('nots', { server => 'h' }) };
    like($@, qr/token is required/, 'adding without a token is refused');
    eval { $plugin->on_add_hook('badns', { server => 'h', namespace => 'a/b' }, token => 't') };
    like($@, qr/namespace 'a\/b' is not valid/, 'a namespace the server cannot take is refused');
    eval { $plugin->on_add_hook('badfp', { server => 'h', fingerprint => 'zz' }, token => 't') };
    like($@, qr/not a SHA-256 fingerprint/, 'a malformed fingerprint is refused');
};

subtest 'volume names without a network call' => sub {
    # A server that accepts connections and never answers: any network
    # call would take seconds.
    my $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 5) or die;
    my $off = { %$scfg, port => $hole->sockport };
    my $t = time();
    my @v = $plugin->parse_volname('backup/qemu-100-2026_11_25-22_00_00');
    is_deeply([@v[0 .. 2]], ['backup', 'qemu-100-2026_11_25-22_00_00', 100], 'parse_volname');
    is($v[6], 'backstop-qemu', 'format');
    my ($path, $vmid, $vtype) = $plugin->path($off, 'backup/lxc-7-2026_01_02-03_04_05', $storeid);
    is_deeply([$vmid, $vtype], [7, 'backup'], 'path gives owner vmid and vtype');
    like($path, qr{^backstop://127\.0\.0\.1:\d+/default/lxc-7-2026_01_02-03_04_05$}, 'path names the backup');
    eval { $plugin->parse_volname('backup/vzdump-qemu-100.vma') };
    like($@, qr/unable to parse/, 'foreign names are refused');
    eval { $plugin->parse_volname('images/100/vm-100-disk-0.raw') };
    like($@, qr/unable to parse/, 'image names are refused');
    cmp_ok(time() - $t, '<', 0.5, 'no network involved');
    is_deeply([PVE::Storage::Custom::BackstopPlugin::parse_snapshot_name('qemu-100-2026_11_25-22_00_00')],
        ['qemu', 100, 1795644000], 'snapshot name → type, vmid, UTC time');
};

subtest 'status from the server, cached' => sub {
    my @st = $plugin->status($storeid, $scfg, {});
    is($st[3], 1, 'active');
    cmp_ok($st[0], '>', 0, 'total from the file store');
    cmp_ok($st[1], '>', 0, 'avail');
    ok($plugin->check_connection($storeid, $scfg), 'check_connection');
    ok(-f "$root/run/backstop/status-$storeid.json", 'status cached on disk for other processes');
    my $t = time();
    $plugin->status($storeid, $scfg, {}) for 1 .. 50;
    cmp_ok(time() - $t, '<', 0.5, '50 status calls answered from the cache');
};

subtest 'status when the server is unreachable: fast, inactive' => sub {
    my $down = { %$scfg, port => free_port() };
    my $t = time();
    my @st = $plugin->status('down', $down, {}) for 1 .. 2;
    $plugin->on_add_hook('down', $down, token => $srv->{token});
    @st = $plugin->status('down', $down, {});
    is($st[3], 0, 'connection refused: inactive');
    cmp_ok(time() - $t, '<', 3, 'and fast');
    eval { $plugin->check_connection('down', $down) };
    like($@, qr/cannot connect to https:\/\/127\.0\.0\.1:\d+/, 'check_connection says why');

    my $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 5) or die;
    my $hang = { %$scfg, port => $hole->sockport };
    $plugin->on_add_hook('hang', $hang, token => $srv->{token});
    $t = time();
    @st = $plugin->status('hang', $hang, {});
    my $took = time() - $t;
    is($st[3], 0, 'a server that never answers: inactive');
    cmp_ok($took, '<', 4, sprintf('answered in %.1fs, well under pvestatd\'s 7s', $took));
    $t = time();
    @st = $plugin->status('hang', $hang, {});
    cmp_ok(time() - $t, '<', 0.2, 'and not asked again right away');
    $t = time();
    eval { $plugin->list_volumes('hang', $hang, undef, ['backup']) };
    like($@, qr/did not answer|TLS handshake/, 'list_volumes fails with the reason');
    cmp_ok(time() - $t, '<', 0.5, 'at once, while the server is known to be down');
};

subtest 'TLS pinning and refusals' => sub {
    my $wrong = { %$scfg, fingerprint => join(':', ('AB') x 32) };
    $plugin->on_add_hook('pin', $wrong, token => $srv->{token});
    eval { $plugin->check_connection('pin', $wrong) };
    like($@, qr/does not match the configured fingerprint \(server presented \Q$srv->{fingerprint}\E\)/,
        'a wrong fingerprint is refused, and the presented one is named');
    my $nopin = { %$scfg };
    delete $nopin->{fingerprint};
    $plugin->on_add_hook('nopin', $nopin, token => $srv->{token});
    eval { $plugin->check_connection('nopin', $nopin) };
    like($@, qr/TLS handshake with .* failed.*fingerprint option/, 'an unknown CA without a pin is refused, with a hint');
    $plugin->on_add_hook('badtok', $scfg, token => 'bst_0000000000000000_' . ('0' x 64));
    eval { $plugin->check_connection('badtok', $scfg) };
    like($@, qr/answered 401/, 'a wrong token: the server\'s 401 is reported');
    my $p = eval { $plugin->new_backup_provider($scfg, 'badtok', sub { }) };
    eval { $p->job_init(time()) };
    like($@, qr/starting the backup job: server https:\/\/127\.0\.0\.1:\d+ answered 401/, 'job_init says who refused what');
    eval { $plugin->new_backup_provider($scfg, 'notoken', sub { }) };
    like($@, qr/no API token for storage 'notoken'.*pvesm set notoken --token/, 'a missing token file is named');
};

subtest 'storage does not pretend to hold images' => sub {
    is_deeply($plugin->list_images($storeid, $scfg, 100), [], 'list_images is empty');
    is_deeply($plugin->list_volumes($storeid, $scfg, undef, ['images']), [], 'list_volumes for images is empty');
    eval { $plugin->alloc_image($storeid, $scfg, 100, 'raw', undef, 1024) };
    like($@, qr/not possible on backstop storage/, 'alloc_image refused');
    eval { $plugin->volume_snapshot($scfg, $storeid, 'backup/qemu-1-2026_01_01-00_00_00', 's') };
    like($@, qr/not possible on backstop storage/, 'volume_snapshot refused');
};

$srv->{stop}->();
subtest 'status after the server stopped' => sub {
    PVE::Storage::Custom::BackstopPlugin::forget_status($storeid);
    my $t = time();
    my @st = $plugin->status($storeid, $scfg, {});
    is($st[3], 0, 'inactive');
    cmp_ok(time() - $t, '<', 3, 'fast');
};

done_testing();
