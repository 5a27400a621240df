'use server';
// A server action that publishes over HTTP through the relay:
// POST <relay>/event with the browser's session cookies and an allowed
// Origin. The relay verifies the cookie's access token (refreshing it with
// Cognito when due) and calls AppSync Events with it; the app never handles
// a token itself, it only passes on the cookies it was sent.
import { cookies } from 'next/headers';
import { appConfig, boardChannel } from '@/lib/config';
import { currentSession } from '@/lib/session';

export interface PublishResult {
  ok: boolean;
  status: number;
  error?: string;
}

const SESSION_COOKIE = /^CognitoIdentityServiceProvider\./;

export async function publishViaServer(_previous: PublishResult | null, form: FormData): Promise<PublishResult> {
  const text = String(form.get('text') ?? '').trim().slice(0, 280);
  if (!text) return { ok: false, status: 400, error: 'empty card' };
  const session = await currentSession();
  if (!session) return { ok: false, status: 401, error: 'not signed in' };
  const c = appConfig();
  // Only Amplify's session cookies, exactly as the browser sent them.
  const cookieHeader = (await cookies())
    .getAll()
    .filter((k) => SESSION_COOKIE.test(k.name))
    .map((k) => `${k.name}=${k.value}`)
    .join('; ');
  const card = {
    id: crypto.randomUUID(),
    text,
    author: session.username,
    via: 'server action (HTTP publish)',
    at: new Date().toISOString(),
  };
  try {
    const resp = await fetch(c.relayPublishUrl, {
      method: 'POST',
      cache: 'no-store',
      headers: { 'content-type': 'application/json', origin: c.appOrigin, cookie: cookieHeader },
      body: JSON.stringify({ channel: boardChannel(c, session.groups), events: [JSON.stringify(card)] }),
      signal: AbortSignal.timeout(10_000),
    });
    // The relay's error bodies are fixed labels ({"error":…,"reason":…});
    // AppSync's success body lists the accepted events. Neither holds a token.
    if (!resp.ok) return { ok: false, status: resp.status, error: (await resp.text()).slice(0, 200) };
    await resp.body?.cancel();
    return { ok: true, status: resp.status };
  } catch (e) {
    return { ok: false, status: 502, error: e instanceof Error ? e.message : String(e) };
  }
}
