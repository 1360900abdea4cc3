package PVEDriver;

# Replays what vzdump, qmrestore and pct restore do with a backup provider
# (pve-integration.md section 7, from qemu-server, pve-container and
# pve-manager), on the real plugin. QEMU's part is played by the QEMU tools:
# the "fleecing" snapshot-access node is a copy of the disk image served by
# qemu-nbd (writable, so TRIM works) with the dirty bitmap as its NBD meta
# context; teardown with success clears the bitmap as QEMU does.

use strict;
use warnings;

use File::Copy qw(copy);
use File::Path qw(make_path);
use Test::More;

use BackstopTest;

# The QEMU/PVE bitmap for a storage is named after the backup target.
sub bitmap_name { return "snapshot-access:$_[0]" }

# vzdump_vm(%o): one guest through 7.1. Options: plugin, scfg, storeid,
# vmid, disks => [{ device, image (qcow2 with the bitmap), size }], conf,
# firewall, bwlimit (KiB/s), notes, protected, keep (prune-backups hash),
# log (file), time. Returns { volid, name, stats, error, incremental }.
sub vzdump_vm {
    my (%o) = @_;
    my ($plugin, $scfg, $storeid, $vmid) = @o{qw(plugin scfg storeid vmid)};
    my $logf = capture_log($o{log});
    my $r = {};
    my $provider = $plugin->new_backup_provider($scfg, $storeid, $logf);
    $provider->job_init($o{time} // time());
    my $dir = BackstopTest::tmpdir();
    my @servers;
    eval {
        $plugin->list_volumes($storeid, $scfg, $vmid, ['backup']); # max backups check
        my $init = $provider->backup_init($vmid, 'qemu', $o{time} // time());
        my $name = $init->{'archive-name'};
        die "bad archive name '$name'\n" if !$name || $name !~ m!^[a-zA-Z0-9\-.+=_/:]+$!;
        $r->{name} = $name;
        $r->{volid} = "$storeid:backup/$name";
        $logf->('info', "creating " . $provider->provider_name() . " archive '$name'");
        my $mech = $provider->backup_get_mechanism($vmid, 'qemu');
        die "mechanism '$mech' is not supported for VMs\n" if $mech ne 'file-handle' && $mech ne 'nbd';
        die "test driver only plays the nbd mechanism\n" if $mech ne 'nbd';
        my $devices = { map { $_->{device} => { size => $_->{size} } } @{ $o{disks} } };
        my $inc = $provider->backup_vm_query_incremental($vmid, $devices) // {};
        $r->{incremental} = $inc;
        my $volumes = {};
        for my $d (@{ $o{disks} }) {
            my $want = $inc->{ $d->{device} };
            die "invalid incremental mode '$want'\n" if defined($want) && $want !~ /^(new|use|none)$/;
            # QEMU: use → reuse (the bitmap exists in these images), new → new,
            # none or not returned → no bitmap.
            my $mode = !defined($want) || $want eq 'none' ? 'none' : $want eq 'use' ? 'reuse' : 'new';
            my $fleece = "$dir/$d->{device}.fleece.qcow2";
            copy($d->{image}, $fleece) or die "copy: $!";
            my $nbd = BackstopTest::qemu_nbd($fleece, $d->{device}, dir => $dir, writable => 1,
                bitmap => $mode eq 'none' ? undef : bitmap_name($storeid));
            push @servers, $nbd;
            $d->{fleece} = $fleece;
            $volumes->{ $d->{device} } = {
                size => $d->{size},
                'bitmap-mode' => $mode,
                'nbd-path' => $nbd->{sock},
                ($mode ne 'none' ? ('bitmap-name' => bitmap_name($storeid)) : ()),
            };
        }
        my $info = {};
        $info->{'bandwidth-limit'} = $o{bwlimit} * 1024 if $o{bwlimit};
        $info->{'firewall-config'} = $o{firewall} if defined($o{firewall});
        $provider->backup_vm($vmid, $o{conf}, $volumes, $info);
        # QEMU: teardown with success=1 clears the bitmaps.
        $_->{stop}->() for @servers;
        for my $d (@{ $o{disks} }) {
            BackstopTest::run_out('qemu-img', 'bitmap', '--clear', $d->{image}, bitmap_name($storeid));
        }
        PVE_Storage_update_volume_attribute($plugin, $scfg, $storeid, $r->{volid}, 'notes', $o{notes})
            if defined($o{notes});
        PVE_Storage_update_volume_attribute($plugin, $scfg, $storeid, $r->{volid}, 'protected', 1)
            if $o{protected};
        $r->{prune} = $plugin->prune_backups($scfg, $storeid, $o{keep}, $vmid, 'qemu', 0, $logf)
            if $o{keep};
        $r->{stats} = $provider->backup_cleanup($vmid, 'qemu', 1, {});
    };
    if (my $err = $@) {
        $r->{error} = $err;
        $logf->('err', "$err");
        eval { $provider->backup_cleanup($vmid, 'qemu', 0, { error => "$err" }) };
        $logf->('warn', "backup_cleanup: $@") if $@;
    }
    $_->{stop}->() for @servers;
    my $vzlog = "$dir/qemu-$vmid.log";
    open(my $fh, '>', $vzlog) or die;
    print {$fh} BackstopTest::log_text($o{log});
    close($fh);
    $provider->backup_handle_log_file($vmid, $vzlog);
    $provider->job_cleanup();
    $provider->job_cleanup(); # vzdump's error path may call it again
    return $r;
}

# vzdump_ct(%o): one container through 7.2. Options: plugin, scfg,
# storeid, vmid, rootfs, sources, excludes, idmap ([[ct, host, n]]; empty
# for a privileged container, run without a user namespace), conf,
# firewall, notes, protected, log, time.
sub vzdump_ct {
    my (%o) = @_;
    my ($plugin, $scfg, $storeid, $vmid) = @o{qw(plugin scfg storeid vmid)};
    my $logf = capture_log($o{log});
    my $r = {};
    my $provider = $plugin->new_backup_provider($scfg, $storeid, $logf);
    $provider->job_init($o{time} // time());
    eval {
        $plugin->list_volumes($storeid, $scfg, $vmid, ['backup']);
        my $init = $provider->backup_init($vmid, 'lxc', $o{time} // time());
        $r->{name} = $init->{'archive-name'};
        $r->{volid} = "$storeid:backup/$r->{name}";
        $provider->provider_name();
        my $mech = $provider->backup_get_mechanism($vmid, 'lxc');
        die "mechanism '$mech' is not supported for containers\n" if $mech ne 'directory';
        my $root_uid = @{ $o{idmap} // [] } ? $o{idmap}->[0]->[1] : 0;
        my $info = {
            directory => $o{rootfs},
            sources => $o{sources} // ['./'],
            'backup-user-id' => $root_uid,
        };
        $info->{'firewall-config'} = $o{firewall} // '';
        $provider->backup_container_prepare($vmid, $info);
        if (@{ $o{idmap} // [] }) {
            my $err = BackstopTest::run_in_userns(sub {
                $provider->backup_container($vmid, $o{conf}, $o{excludes} // [], $info);
            }, $o{idmap});
            die $err if defined($err);
        } else {
            $provider->backup_container($vmid, $o{conf}, $o{excludes} // [], $info);
        }
        PVE_Storage_update_volume_attribute($plugin, $scfg, $storeid, $r->{volid}, 'notes', $o{notes})
            if defined($o{notes});
        $r->{stats} = $provider->backup_cleanup($vmid, 'lxc', 1, {});
    };
    if (my $err = $@) {
        $r->{error} = $err;
        $logf->('err', "$err");
        eval { $provider->backup_cleanup($vmid, 'lxc', 0, { error => "$err" }) };
    }
    $provider->backup_handle_log_file($vmid, $o{log});
    $provider->job_cleanup();
    return $r;
}

# PVE::Storage::update_volume_attribute, with its max-protected-backups
# check, on the plugin.
sub PVE_Storage_update_volume_attribute {
    my ($plugin, $scfg, $storeid, $volid, $attribute, $value) = @_;
    my ($volname) = $volid =~ /^[^:]+:(.+)$/;
    my ($vtype, undef, $vmid) = $plugin->parse_volname($volname);
    my $max = $scfg->{'max-protected-backups'} // -1;
    if ($vtype eq 'backup' && $vmid && $attribute eq 'protected' && $value
        && !$plugin->get_volume_attribute($scfg, $storeid, $volname, 'protected') && $max > -1) {
        my $backups = $plugin->list_volumes($storeid, $scfg, $vmid, ['backup']);
        my ($type) = map { $_->{subtype} } grep { $_->{volid} eq $volid } @$backups;
        my $count = grep { $_->{protected} && (!$type || ($_->{subtype} // '') eq $type) } @$backups;
        die "The number of protected backups per guest is limited to $max on storage '$storeid'\n"
            if $max <= $count;
    }
    return $plugin->update_volume_attribute($scfg, $storeid, $volname, $attribute, $value);
}

# qmrestore(%o): 7.3 into raw target files. Options: plugin, scfg, storeid,
# volid, dir, log. Returns { targets => { device => path }, config, firewall }.
sub qmrestore {
    my (%o) = @_;
    my ($plugin, $scfg, $storeid) = @o{qw(plugin scfg storeid)};
    my $logf = capture_log($o{log});
    my ($volname) = $o{volid} =~ /^[^:]+:(.+)$/;
    my $a = $plugin->new_backup_provider($scfg, $storeid, $logf);  # API: storage_has_feature
    my $b = $plugin->new_backup_provider($scfg, $storeid, $logf);  # API: extract_vzdump_config
    $b->archive_get_guest_config($volname, $storeid);
    my $r = { targets => {} };
    eval {
        my ($mech, $vmtype) = $a->restore_get_mechanism($volname);
        die "mechanism '$mech' is not supported for VMs\n" if $mech ne 'qemu-img';
        die "cannot restore non-VM guest of type '$vmtype'\n" if $vmtype ne 'qemu';
        my $devinfo = $a->restore_vm_init($volname);
        my $conf = $a->archive_get_guest_config($volname)
            or die "backup provider failed to extract guest configuration\n";
        $r->{config} = $conf;
        $r->{firewall} = $a->archive_get_firewall_config($volname);
        my %map;
        for my $line (split(/\n/, $conf)) {
            next if $line !~ /^#qmdump#map:(\S+?):(\S+?):(\S*?):(\S*?):$/;
            my ($virtdev, $devname) = ($1, $2);
            die "archive does not contain data for drive '$virtdev'\n" if !$devinfo->{$devname};
            $map{$virtdev} = $devname;
        }
        for my $virtdev (sort keys %map) {
            my $dev = $map{$virtdev};
            my $target = "$o{dir}/$virtdev.raw";
            BackstopTest::run_out('qemu-img', 'create', '-f', 'raw', $target, $devinfo->{$dev}->{size});
            my $info = $a->restore_vm_volume_init($volname, $dev, {});
            my $path = $info->{'qemu-img-path'} or die "did not get source image path from backup provider\n";
            die "source '$path' is neither a file nor a block device\n" if !(-f $path || -b $path);
            my $json = BackstopTest::run_out('qemu-img', 'info', '-f', 'raw', '--output=json', $path);
            my ($size) = $json =~ /"virtual-size":\s*(\d+)/;
            die "size of $path is $size, restore_vm_init said $devinfo->{$dev}->{size}\n"
                if $size != $devinfo->{$dev}->{size};
            eval { BackstopTest::run_out('qemu-img', 'convert', '-p', '-n', '-f', 'raw', $path, '-O', 'raw', $target) };
            my $err = $@;
            eval { $a->restore_vm_volume_cleanup($volname, $dev, {}) };
            if (my $cerr = $@) { die $cerr if !$err; warn $cerr }
            die $err if $err;
            $r->{targets}->{$dev} = $target;
            $r->{paths}->{$dev} = $path;
        }
    };
    my $err = $@;
    eval { $a->restore_vm_cleanup($volname) };
    warn "backup provider cleanup after restore failed - $@" if $@;
    die $err if $err;
    return $r;
}

my %TAR_COMP = ('.tar' => [], '.tar.gz' => ['-z'], '.tar.bz2' => ['-j'], '.tar.xz' => ['-J'],
    '.tar.lzo' => ['--lzop'], '.tar.zst' => ['--zstd']);

# pct_extract($file, $rootdir, $idmap): what pve-container does with a
# tar-path: compression from the file name, the untrusted listing check,
# then tar with PVE's flags inside the container's user namespace.
sub pct_extract {
    my ($file, $rootdir, $idmap) = @_;
    die "'$file' is not a regular file\n" if !-f $file;
    my ($ext) = grep { $file =~ /\Q$_\E$/ } sort { length($b) <=> length($a) } keys %TAR_COMP;
    die "'$file' does not look like a template archive\n" if !defined($ext);
    my @comp = @{ $TAR_COMP{$ext} };
    my $list = BackstopTest::run_out('tar', '-tvf', $file, @comp, '--numeric-owner');
    my @members = split(/\n/, $list);
    die "archive has fewer than 10 members\n" if @members < 10;
    die "archive has no sbin\n" if !grep { m{ \./sbin/?$|\ sbin/?$} } @members;
    die "multi-volume archive\n" if grep { /^M/ } @members;
    my @cmd = ('tar', 'xpf', '-', @comp, '--totals', @PVE::Storage::Plugin::COMMON_TAR_FLAGS,
        '-C', $rootdir, '--skip-old-files', '--anchored', '--exclude', './dev/*');
    # PVE opens the file as root and hands it to the namespaced tar as its
    # standard input (lxc-usernsexec … tar xpf -): the file itself need not
    # be readable from inside the namespace.
    open(my $in, '<', $file) or die "$file: $!\n";
    my $err = BackstopTest::run_in_userns(sub {
        open(STDIN, '<&', $in) or die "dup $file: $!\n";
        BackstopTest::run_out(@cmd);
    }, $idmap);
    close($in);
    die "extract failed: $err" if defined($err);
}

# pct_restore(%o): 7.4 into $o{rootdir} (owned by the container's root),
# extracted in a user namespace with $o{idmap} as lxc-usernsexec does.
sub pct_restore {
    my (%o) = @_;
    my ($plugin, $scfg, $storeid) = @o{qw(plugin scfg storeid)};
    my $logf = capture_log($o{log});
    my ($volname) = $o{volid} =~ /^[^:]+:(.+)$/;
    my $r = {};
    # recover_config → extract_vzdump_config → a fresh provider
    $r->{config} = $plugin->new_backup_provider($scfg, $storeid, $logf)
        ->archive_get_guest_config($volname, $storeid);
    my $p = $plugin->new_backup_provider($scfg, $storeid, $logf);
    my ($mech, $vmtype) = $p->restore_get_mechanism($volname, $storeid);
    die "cannot restore '$vmtype' as a container\n" if $vmtype ne 'lxc';
    die "test driver plays the tar mechanism only\n" if $mech ne 'tar';
    eval {
        my $info = $p->restore_container_init($volname, $storeid, {});
        my $file = $info->{'tar-path'};
        $r->{tar_path} = $file;
        die "'$file' is not a regular file\n" if !-f $file;
        pct_extract($file, $o{rootdir}, $o{idmap});
    };
    my $err = $@;
    eval { $p->restore_container_cleanup($volname, $storeid, {}) };
    if (my $cerr = $@) { die $cerr if !$err; warn $cerr }
    die $err if $err;
    # restore_configuration → new instances
    my $q = $plugin->new_backup_provider($scfg, $storeid, $logf);
    $r->{config2} = $q->archive_get_guest_config($volname, $storeid);
    $r->{firewall} = $q->archive_get_firewall_config($volname, $storeid);
    return $r;
}

1;
