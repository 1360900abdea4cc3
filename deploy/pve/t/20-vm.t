#!/usr/bin/perl
# VM backups as vzdump runs them (pve-integration.md 7.1) through the real
# plugin against a real server: QEMU's export is a qemu-nbd on a UNIX
# socket, relayed through the HTTPS upgrade tunnel; a full backup, then an
# incremental (bitmap reuse) after writes; listing, notes, protection,
# prune; a VM restore as qmrestore runs it (7.3); the cleanup quirks.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../src";
use Test::More;
use Time::HiRes qw(time);

use BackstopTest;

BEGIN { require_peers('pg', 'qemu') }

use PVEDriver;
use PVE::Storage::Custom::BackstopPlugin;

my $srv = start_server();
my ($plugin, $scfg, $storeid) = pve_storage($srv);
my $dir = tmpdir();
my $MiB = 1 << 20;

# A raw image of random, zero and repeated 4 MiB blocks and a short tail,
# as qcow2 with the storage's dirty bitmap (64 KiB granularity: finer than
# PVE's 4 MiB, so the incremental's byte count is exact).
sub make_disk {
    my ($name, $slots, $tail) = @_;
    open(my $rnd, '<', '/dev/urandom') or die;
    read($rnd, my $repeated, 4 * $MiB);
    open(my $fh, '>', "$dir/$name.raw") or die;
    for my $i (0 .. $slots - 1) {
        my $k = $i % 5;
        if ($k == 0 || $k == 3) { read($rnd, my $b, 4 * $MiB); print {$fh} $b }
        elsif ($k == 1) { print {$fh} "\0" x (4 * $MiB) }
        elsif ($k == 2) { print {$fh} $repeated }
        else { read($rnd, my $b, 2 * $MiB); print {$fh} $b, "\0" x (2 * $MiB) }
    }
    read($rnd, my $t, $tail);
    print {$fh} $t;
    close($fh);
    run_out('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', "$dir/$name.raw", "$dir/$name.qcow2");
    run_out('qemu-img', 'bitmap', '--add', '--enable', '-g', '64K', "$dir/$name.qcow2",
        PVEDriver::bitmap_name($storeid));
    return { image => "$dir/$name.qcow2", size => $slots * 4 * $MiB + $tail };
}

my $a = make_disk('a', 10, 64 << 10);
my $b = make_disk('b', 3, 1536);
my @disks = ({ device => 'drive-scsi0', %$a }, { device => 'drive-virtio1', %$b });

my $conf = "boot: order=scsi0\ndescription: Gr\xc3\xbc\xc3\x9fe aus dem Test\nmemory: 512\nname: pl-test\n"
    . "scsi0: local-lvm:vm-100-disk-0,size=" . ($a->{size} >> 10) . "K\n"
    . "virtio1: local-lvm:vm-100-disk-1,size=" . ($b->{size} >> 10) . "K\n"
    . "#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:\n#qmdump#map:virtio1:drive-virtio1:local-lvm:raw:\n";
my $fw = "[OPTIONS]\nenable: 1\n\n[RULES]\nIN ACCEPT -p tcp -dport 22\n";

# The server's copy of a disk, downloaded (GET …/raw), hashed.
sub snapshot_disk_sha {
    my ($name, $dev) = @_;
    my $c = BackstopTest::client($srv);
    my $file = "$dir/dl-$name-$dev.raw";
    open(my $fh, '>', $file) or die;
    my $res = $c->request('GET', "/api/v1/snapshots/$name/disks/$dev/raw", save_fh => $fh);
    close($fh);
    die "download $name $dev: $res->{status}\n" if $res->{status} != 200;
    my $sha = file_sha($file);
    unlink($file);
    return $sha;
}

my %want = map { $_->{device} => raw_sha($_->{image}) } @disks;
my $log1 = "$dir/vzdump1.log";
my $t0 = 1764100000;
my $full = PVEDriver::vzdump_vm(plugin => $plugin, scfg => $scfg, storeid => $storeid, vmid => 100,
    disks => \@disks, conf => $conf, firewall => $fw, log => $log1, time => $t0);

subtest 'full backup through the NBD tunnel' => sub {
    is($full->{error}, undef, 'vzdump run without error') or diag(log_text($log1));
    is($full->{name}, 'qemu-100-2025_11_25-19_46_40', 'archive name is the snapshot name');
    is_deeply($full->{incremental}, { 'drive-scsi0' => 'new', 'drive-virtio1' => 'new' },
        'first backup: every disk new');
    cmp_ok($full->{stats}->{stats}->{'archive-size'}, '==', $a->{size} + $b->{size},
        'backup_cleanup reports the archive size');
    for my $d (@disks) {
        is(snapshot_disk_sha($full->{name}, $d->{device}), $want{ $d->{device} },
            "$d->{device}: the server's copy equals the image");
        is(raw_sha($d->{fleece}), zero_sha($d->{size}),
            "$d->{device}: the fleecing export is empty afterwards (TRIM passed the tunnel)");
    }
    my $log = log_text($log1);
    like($log, qr/drive-scsi0: server: pulling drive-scsi0: \d+ bytes, bitmap mode new/, 'server progress in the task log');
    like($log, qr/drive-virtio1: server: backup of drive-virtio1 done: read/, 'and its end');
    like($log, qr/backup committed as qemu-100-2025_11_25-19_46_40/, 'commit logged');
};

# Writes after the backup, tracked by the bitmap: 64 KiB in slot 2, 4 KiB
# in slot 3 (one 64 KiB granule), 128 KiB across slots 3 and 4.
run_out('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5c 8388608 65536', '-c', 'write -P 0x33 12648448 4096',
    '-c', 'write -P 0x71 16711680 131072', $a->{image});
my $dirty = (64 + 64 + 128) << 10;
%want = map { $_->{device} => raw_sha($_->{image}) } @disks;
my $log2 = "$dir/vzdump2.log";
my $inc = PVEDriver::vzdump_vm(plugin => $plugin, scfg => $scfg, storeid => $storeid, vmid => 100,
    disks => \@disks, conf => $conf, firewall => $fw, log => $log2, time => $t0 + 3600,
    notes => 'incremental of pl-test', protected => 1);

subtest 'incremental backup (bitmap reuse) after writes' => sub {
    is($inc->{error}, undef, 'vzdump run without error') or diag(log_text($log2));
    is_deeply($inc->{incremental}, { 'drive-scsi0' => 'use', 'drive-virtio1' => 'use' },
        'the server offers the last backup as base');
    my $log = log_text($log2);
    like($log, qr/pulling drive-scsi0: \d+ bytes, bitmap mode reuse/, 'pulled with bitmap reuse');
    my ($read) = $log =~ /backup of drive-scsi0 done: read (\d+) bytes/;
    is($read, $dirty, 'only the dirty bytes were read');
    my ($read_b) = $log =~ /backup of drive-virtio1 done: read (\d+) bytes/;
    is($read_b, 0, 'an unchanged disk: nothing read');
    for my $d (@disks) {
        is(snapshot_disk_sha($inc->{name}, $d->{device}), $want{ $d->{device} },
            "$d->{device}: the incremental equals the changed image");
    }
};

subtest 'list_volumes, config, notes, protection' => sub {
    my $vols = $plugin->list_volumes($storeid, $scfg, 100, ['backup']);
    is(scalar(@$vols), 2, 'two backups of VM 100');
    my ($v) = grep { $_->{volid} eq $inc->{volid} } @$vols;
    ok($v, 'the incremental is listed under its volid');
    is($v->{subtype}, 'qemu', 'subtype qemu (the GUI needs it to restore)');
    is($v->{content}, 'backup', 'content backup');
    is($v->{vmid}, 100, 'vmid');
    is($v->{ctime}, $t0 + 3600, 'ctime = backup time');
    is($v->{size}, $a->{size} + $b->{size}, 'size');
    is($v->{notes}, 'incremental of pl-test', 'notes');
    is($v->{protected}, 1, 'protected');
    is_deeply($plugin->list_volumes($storeid, $scfg, 101, ['backup']), [], 'nothing for another vmid');
    is(scalar(@{ $plugin->list_volumes($storeid, $scfg, undef, ['backup', 'iso']) }), 2, 'all guests');
    my (undef, $volname) = split(/:/, $inc->{volid}, 2);
    is($plugin->get_volume_attribute($scfg, $storeid, $volname, 'notes'), 'incremental of pl-test', 'get notes');
    is($plugin->get_volume_attribute($scfg, $storeid, $volname, 'protected'), 1, 'get protected');
    my @size = $plugin->volume_size_info($scfg, $storeid, $volname);
    is($size[0], $a->{size} + $b->{size}, 'volume_size_info');

    my $p = $plugin->new_backup_provider($scfg, $storeid, sub { });
    is($p->archive_get_guest_config($volname, $storeid), $conf, 'guest config byte-exact');
    is($p->archive_get_firewall_config($volname, $storeid), $fw, 'firewall config byte-exact');
    is_deeply($p->restore_vm_init($volname), { 'drive-scsi0' => { size => $a->{size} },
        'drive-virtio1' => { size => $b->{size} } }, 'restore_vm_init: devices and sizes');
    is_deeply([$p->restore_get_mechanism($volname, $storeid)], ['qemu-img', 'qemu'], 'restore mechanism');
    my $c = BackstopTest::client($srv);
    my (undef, $res) = $c->call('GET', "/api/v1/snapshots/$inc->{name}/log");
    like($res->{content}, qr/backup committed as \Q$inc->{name}\E/, 'the vzdump log was stored with the backup');

    eval { $plugin->free_image($storeid, $scfg, $volname) };
    like($@, qr/cannot remove protected backup '\Q$volname\E'/, 'a protected backup is not deleted');
    is(scalar(@{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) }), 2, 'still there');
    PVEDriver::PVE_Storage_update_volume_attribute($plugin, $scfg, $storeid, $inc->{volid}, 'notes', 'edited');
    is($plugin->get_volume_attribute($scfg, $storeid, $volname, 'notes'), 'edited', 'notes updated');
    my $limited = { %$scfg, 'max-protected-backups' => 1 };
    eval { PVEDriver::PVE_Storage_update_volume_attribute($plugin, $limited, $storeid, $full->{volid}, 'protected', 1) };
    like($@, qr/limited to 1/, "PVE's max-protected-backups check works on the listing");
};

subtest 'a failed backup leaves nothing behind' => sub {
    my $log = "$dir/vzdump-fail.log";
    my $broken = [{ %{ $disks[0] }, image => $a->{image} }];
    no warnings 'redefine';
    my $orig = \&BackstopTest::qemu_nbd;
    local *BackstopTest::qemu_nbd = sub { my $n = $orig->(@_); unlink($n->{sock}); $n };
    my $r = PVEDriver::vzdump_vm(plugin => $plugin, scfg => $scfg, storeid => $storeid, vmid => 100,
        disks => $broken, conf => $conf, log => $log, time => $t0 + 7200);
    like($r->{error}, qr/cannot connect to QEMU's NBD export/, 'backup_vm fails with the reason');
    is(scalar(@{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) }), 2, 'no new backup listed');
};

subtest 'cleanup quirks' => sub {
    my $p = $plugin->new_backup_provider($scfg, $storeid, sub { });
    is($p->backup_cleanup(999, undef, 0, { error => 'guest not found' }), undef,
        'backup_cleanup without backup_init, vmtype undef');
    is_deeply($p->backup_cleanup(999, 'qemu', 1, {}), { stats => { 'archive-size' => 0 } },
        'backup_cleanup(success) without state');
    $p->backup_handle_log_file(999, '/nonexistent');
    $p->job_cleanup();
    $p->job_init(time());
    $p->job_cleanup();
    $p->job_cleanup();
    pass('job_cleanup twice');
    $p->restore_vm_volume_cleanup('backup/qemu-100-2025_11_25-19_46_40', 'drive-scsi0', {});
    $p->restore_vm_cleanup('backup/qemu-100-2025_11_25-19_46_40');
    $p->restore_container_cleanup('backup/lxc-100-2025_11_25-19_46_40', $storeid, {});
    pass('restore cleanups without init, with a storeid where $info is documented');
    my $pp = $plugin->new_backup_provider($scfg, $storeid, sub { });
    $pp->backup_init(100, 'qemu', time());
    $pp->job_cleanup(); # a session vzdump forgot is not left open
    is(scalar(@{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) }), 2, 'no open session became a backup');
};

subtest 'prune through the server' => sub {
    my @before = sort map { $_->{volid} } @{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) };
    my $all = $plugin->prune_backups($scfg, $storeid, { 'keep-all' => 1 }, 100, 'qemu', 1, sub { });
    is_deeply([sort map { $_->{mark} } @$all], ['keep', 'protected'], 'keep-all: kept, protected stays protected');
    my $marks = eval { $plugin->prune_backups($scfg, $storeid, { 'keep-last' => 1 }, 100, 'qemu', 1, sub { }) };
    if (endpoint_pending($@)) {
        diag("POST /api/v1/prune answers 501: skipping prune tests until the server implements it");
        plan skip_all => 'server answers 501 for POST /api/v1/prune (retention not implemented yet)';
    }
    is($@, '', 'dry run') or return;
    is(scalar(@$marks), 2, 'a mark per backup');
    for my $m (@$marks) {
        like($m->{volid}, qr/^\Q$storeid\E:backup\/qemu-100-/, "volid $m->{volid}");
        is($m->{vmid}, 100, 'vmid');
        is($m->{type}, 'qemu', 'type');
        like($m->{mark}, qr/^(keep|remove|protected)$/, "mark $m->{mark}");
    }
    my ($prot) = grep { $_->{volid} eq $inc->{volid} } @$marks;
    is($prot->{mark}, 'protected', 'the protected backup is marked protected');
    is($prot->{ctime}, $t0 + 3600, 'ctime from the name');
    is_deeply([sort map { $_->{volid} } @{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) }],
        \@before, 'a dry run removes nothing');
    # Unprotected, the older backup falls out of keep-last=1.
    PVEDriver::PVE_Storage_update_volume_attribute($plugin, $scfg, $storeid, $inc->{volid}, 'protected', 0);
    $marks = $plugin->prune_backups($scfg, $storeid, { 'keep-last' => 1 }, 100, 'qemu', 1, sub { });
    my %mark = map { $_->{volid} => $_->{mark} } @$marks;
    is_deeply(\%mark, { $inc->{volid} => 'keep', $full->{volid} => 'remove' }, 'keep-last=1: newest kept, older removed');
    my @logged;
    my $real = $plugin->prune_backups($scfg, $storeid, { 'keep-last' => 1 }, 100, 'qemu', 0,
        sub { push @logged, $_[1] });
    is_deeply({ map { $_->{volid} => $_->{mark} } @$real }, \%mark, 'the real run marks the same');
    is_deeply([sort map { $_->{volid} } @{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) }],
        [$inc->{volid}], 'the removed backup is gone, the kept one stays');
    is_deeply(\@logged, ["removing backup '$full->{volid}'"], 'the removal is logged as PVE does');
    PVEDriver::PVE_Storage_update_volume_attribute($plugin, $scfg, $storeid, $inc->{volid}, 'protected', 1);
};

subtest 'delete, then the incremental still restores everything' => sub {
    my (undef, $volname) = split(/:/, $full->{volid}, 2);
    if (grep { $_->{volid} eq $full->{volid} } @{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) }) {
        $plugin->free_image($storeid, $scfg, $volname);
    }
    ok(!grep({ $_->{volid} eq $full->{volid} } @{ $plugin->list_volumes($storeid, $scfg, 100, ['backup']) }),
        'the full backup is gone');
    for my $d (@disks) {
        is(snapshot_disk_sha($inc->{name}, $d->{device}), $want{ $d->{device} },
            "$d->{device}: the incremental is a synthetic full");
    }
};

subtest 'VM restore as qmrestore does it' => sub {
    # Is the server's NBD server there yet? Probe the export tunnel.
    my $c = BackstopTest::client($srv);
    my $e = $c->call('POST', "/api/v1/snapshots/$inc->{name}/disks/drive-scsi0/exports", json => {});
    my $probe_err;
    eval { my ($s) = $c->upgrade($e->{tunnel}); close($s) };
    $probe_err = $@;
    $c->call('DELETE', "/api/v1/exports/$e->{id}", ok => [404]);
    if (endpoint_pending($probe_err)) {
        diag("the export tunnel answers 501 (no NBD server yet): skipping VM restore");
        plan skip_all => 'server answers 501 for the export tunnel (NBD restore server not implemented yet)';
    }
    my $log = "$dir/qmrestore.log";
    my $out = tmpdir();
    my $r = eval { PVEDriver::qmrestore(plugin => $plugin, scfg => $scfg, storeid => $storeid,
        volid => $inc->{volid}, dir => $out, log => $log) };
    is($@, '', 'restore ran') or diag(log_text($log));
    return if !$r;
    is($r->{config}, $conf, 'config');
    is($r->{firewall}, $fw, 'firewall');
    for my $d (@disks) {
        is(file_sha($r->{targets}->{ $d->{device} }), $want{ $d->{device} },
            "$d->{device}: restored through qemu-img-path, identical to the source");
        ok(!-e $r->{paths}->{ $d->{device} }, "$d->{device}: nbdfuse unmounted, files removed");
    }
    is_deeply(scalar($c->call('GET', '/api/v1/exports')), [], 'exports removed');
};

done_testing();
